//! File descriptors for many connections: the soft limit is raised to the hard limit, and the
//! process's descriptor table is grown once at start-up to hold `max_connections`.
//!
//! Why grow it up front: in a multi-threaded process the kernel grows the table by doubling it
//! and waits for an RCU grace period each time, which stalls every thread for milliseconds; a
//! broker accepting thousands of connections would take those stalls while serving (seen as a
//! CONNACK latency tail of 15-30 ms during a burst of connects).

/// Raises the descriptor limit and grows the table; returns the soft limit now in force.
#[cfg(unix)]
pub(crate) fn prepare(max_connections: usize) -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable `rlimit`; getrlimit writes only into it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid `rlimit` read by setrlimit only; raising the soft limit up
        // to the hard one is always permitted.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    let soft = limit.rlim_cur;
    // Room for every connection plus the broker's own files (store, listeners, runtime).
    let wanted = (max_connections as u64)
        .saturating_add(256)
        .min(soft.saturating_sub(1));
    let Ok(target) = libc::c_int::try_from(wanted) else {
        return Some(soft);
    };
    if target > 1024 {
        // SAFETY: descriptor 2 (stderr) is valid in a running process, or fcntl fails with
        // EBADF and nothing happens. F_DUPFD returns a new descriptor at or above `target`,
        // which the kernel's table must then hold; it is closed at once and nothing else refers
        // to it. The table keeps its size after the close.
        unsafe {
            let copy = libc::fcntl(2, libc::F_DUPFD, target);
            if copy >= 0 {
                libc::close(copy);
            }
        }
    }
    Some(soft)
}

#[cfg(not(unix))]
pub(crate) fn prepare(_max_connections: usize) -> Option<u64> {
    None
}
