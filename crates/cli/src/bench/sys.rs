//! What the bench reads from Linux's /proc: CPU time of a process (its own, or the broker's with
//! `--pid`), resident memory, and the open-files limit. Every reader returns `None` where /proc
//! is missing or says something unexpected, and the report then leaves the figure out.

use std::time::Duration;

/// Clock ticks per second of /proc/PID/stat (USER_HZ): 100 on every Linux architecture that
/// Rust supports, and not readable without libc's sysconf.
const TICKS_PER_SECOND: u64 = 100;

fn proc_path(pid: Option<u32>, file: &str) -> String {
    match pid {
        Some(pid) => format!("/proc/{pid}/{file}"),
        None => format!("/proc/self/{file}"),
    }
}

/// User plus system CPU time of a process, all threads, 10 ms resolution.
pub fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    let stat = std::fs::read_to_string(proc_path(pid, "stat")).ok()?;
    parse_cpu_time(&stat)
}

fn parse_cpu_time(stat: &str) -> Option<Duration> {
    // The command name (field 2) may contain spaces and parentheses: fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // Field 3 (state) is first here; utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
}

/// CPU time used by the whole machine (every core, every process: all but idle and iowait).
pub fn machine_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_busy(&stat)
}

fn parse_machine_busy(stat: &str) -> Option<Duration> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = fields.iter().take(8).sum::<u64>() - fields.get(3)? - fields.get(4)?;
    Some(Duration::from_millis(busy * 1000 / TICKS_PER_SECOND))
}

/// Resident set size of a process in bytes (VmRSS).
pub fn rss_bytes(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(proc_path(pid, "status")).ok()?;
    parse_status_kb(&status, "VmRSS:").map(|kb| kb * 1024)
}

fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// The soft limit on open files of this process, if finite.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether a process with this id exists.
pub fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// CPU used between two readings as a share of one core over `wall`: 1.0 is one core busy.
pub fn cpu_share(before: Option<Duration>, after: Option<Duration>, wall: Duration) -> Option<f64> {
    let (before, after) = (before?, after?);
    if wall.is_zero() {
        return None;
    }
    Some(after.saturating_sub(before).as_secs_f64() / wall.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_names() {
        let stat = "1234 (tern (bench) x) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 \
                    3 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_cpu_time(stat), Some(Duration::from_millis(3000)));
        assert_eq!(parse_cpu_time("garbage"), None);
    }

    #[test]
    fn parses_machine_stat() {
        let stat = "cpu  100 5 20 1000 30 1 2 3 0 0\ncpu0 50 2 10 500 15 0 1 1 0 0\n";
        // 100 + 5 + 20 + 1 + 2 + 3 ticks busy.
        assert_eq!(parse_machine_busy(stat), Some(Duration::from_millis(1310)));
        assert!(machine_cpu_time().is_some());
    }

    #[test]
    fn parses_status() {
        let status = "Name:\ttern\nVmPeak:\t  2000 kB\nVmRSS:\t    1536 kB\nThreads:\t3\n";
        assert_eq!(parse_status_kb(status, "VmRSS:"), Some(1536));
        assert_eq!(parse_status_kb(status, "VmSwap:"), None);
    }

    #[test]
    fn reads_this_process() {
        assert!(cpu_time(None).is_some());
        assert!(rss_bytes(None).is_some_and(|rss| rss > 0));
        assert!(process_exists(std::process::id()));
    }

    #[test]
    fn shares() {
        let share = cpu_share(
            Some(Duration::from_millis(100)),
            Some(Duration::from_millis(600)),
            Duration::from_secs(1),
        );
        assert_eq!(share, Some(0.5));
        assert_eq!(cpu_share(None, None, Duration::from_secs(1)), None);
    }
}
