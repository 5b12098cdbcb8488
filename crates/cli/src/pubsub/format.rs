//! `tern sub`'s output, as `mosquitto_sub` prints it: the payload alone, `-v` "topic payload",
//! or `-F` with its `%` codes (flags `-` and `0`, width, `.precision`), `@` time codes and `\`
//! escapes, each message followed by a newline unless `-N`. Times are printed in UTC (`+0000`).

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use tern_client::{Message, Properties};

/// How messages are printed.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub verbose: bool,
    pub format: Option<String>,
    /// Append a newline (no `-N`).
    pub eol: bool,
}

impl Output {
    /// Writes one message; `mid` is the packet id it came with (0 for QoS 0).
    pub fn write(&self, out: &mut impl Write, message: &Message, mid: u16) -> std::io::Result<()> {
        let payload = &message.payload[..];
        if let Some(format) = &self.format {
            let mut line = Vec::new();
            formatted(&mut line, format, message, mid, now());
            if self.eol {
                line.push(b'\n');
            }
            out.write_all(&line)?;
        } else if self.verbose {
            if !payload.is_empty() {
                out.write_all(message.topic.as_bytes())?;
                out.write_all(b" ")?;
                out.write_all(payload)?;
                if self.eol {
                    out.write_all(b"\n")?;
                }
            } else if self.eol {
                writeln!(out, "{} (null)", message.topic)?;
            }
        } else if !payload.is_empty() {
            out.write_all(payload)?;
            if self.eol {
                out.write_all(b"\n")?;
            }
        }
        out.flush()
    }
}

/// The wall clock: seconds since the epoch and nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub secs: u64,
    pub nanos: u32,
}

fn now() -> Now {
    let elapsed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Now {
        secs: elapsed.as_secs(),
        nanos: elapsed.subsec_nanos(),
    }
}

/// Year, month, day, hour, minute, second (UTC) of a Unix time.
fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rest / 3600) as u32,
        (rest / 60 % 60) as u32,
        (rest % 60) as u32,
    )
}

/// One strftime conversion (`@X`), for the codes that do not depend on the locale.
fn strftime(code: u8, now: Now) -> String {
    let (y, mo, d, h, mi, s) = civil(now.secs);
    match code {
        b'Y' => format!("{y}"),
        b'y' => format!("{:02}", y.rem_euclid(100)),
        b'm' => format!("{mo:02}"),
        b'd' => format!("{d:02}"),
        b'e' => format!("{d:2}"),
        b'H' => format!("{h:02}"),
        b'I' => format!("{:02}", if h % 12 == 0 { 12 } else { h % 12 }),
        b'M' => format!("{mi:02}"),
        b'S' => format!("{s:02}"),
        b's' => format!("{}", now.secs),
        b'F' => format!("{y}-{mo:02}-{d:02}"),
        b'T' => format!("{h:02}:{mi:02}:{s:02}"),
        b'z' => "+0000".into(),
        b'Z' => "UTC".into(),
        b'n' => "\n".into(),
        b't' => "\t".into(),
        _ => String::new(),
    }
}

/// `%I`: 2016-08-10T09:47:38+0000
fn iso8601(now: Now) -> String {
    let (y, mo, d, h, mi, s) = civil(now.secs);
    format!("{y}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}+0000")
}

struct Spec {
    left: bool,
    zero: bool,
    width: usize,
    precision: Option<usize>,
}

fn pad(out: &mut Vec<u8>, spec: &Spec, value: &[u8], zero_ok: bool) {
    let fill = if spec.zero && zero_ok && !spec.left {
        b'0'
    } else {
        b' '
    };
    let padding = spec.width.saturating_sub(value.len());
    if !spec.left {
        out.extend(std::iter::repeat_n(fill, padding));
    }
    out.extend_from_slice(value);
    if spec.left {
        out.extend(std::iter::repeat_n(b' ', padding));
    }
}

fn int(out: &mut Vec<u8>, spec: &Spec, value: Option<u64>) {
    match value {
        Some(value) => pad(out, spec, value.to_string().as_bytes(), true),
        // Absent: blanks of the width (zeros with the 0 flag).
        None => {
            let fill = if spec.zero { b'0' } else { b' ' };
            out.extend(std::iter::repeat_n(fill, spec.width));
        }
    }
}

fn text(out: &mut Vec<u8>, spec: &Spec, value: &str) {
    let bytes = value.as_bytes();
    let cut = match spec.precision {
        Some(max) => &bytes[..bytes.len().min(max)],
        None => bytes,
    };
    pad(out, spec, cut, false);
}

/// The payload, raw or hex, cut to the width and padded as mosquitto_sub does.
fn payload(out: &mut Vec<u8>, spec: &Spec, payload: &[u8], hex: Option<bool>) {
    let mut len = payload.len();
    let padding;
    if spec.width > 0 {
        len = len.min(spec.width);
        if hex.is_some() {
            len /= 2;
            padding = spec.width.saturating_sub(len * 2);
        } else {
            padding = spec.width.saturating_sub(len);
        }
    } else {
        padding = 0;
    }
    let fill = if spec.zero { b'0' } else { b' ' };
    if !spec.left {
        out.extend(std::iter::repeat_n(fill, padding));
    }
    let body = &payload[..len];
    match hex {
        None => out.extend_from_slice(body),
        Some(upper) => {
            for byte in body {
                let digits = if upper {
                    format!("{byte:02X}")
                } else {
                    format!("{byte:02x}")
                };
                out.extend_from_slice(digits.as_bytes());
            }
        }
    }
    if spec.left {
        out.extend(std::iter::repeat_n(b' ', padding));
    }
}

/// Writes `message` as `format` says.
pub fn formatted(out: &mut Vec<u8>, format: &str, message: &Message, mid: u16, now: Now) {
    let f = format.as_bytes();
    let props = &message.properties;
    let mut i = 0;
    while i < f.len() {
        match f[i] {
            b'%' if i + 1 < f.len() => {
                i += 1;
                let mut spec = Spec {
                    left: false,
                    zero: false,
                    width: 0,
                    precision: None,
                };
                if f[i] == b'-' {
                    spec.left = true;
                    i = (i + 1).min(f.len() - 1);
                }
                if f[i] == b'0' {
                    spec.zero = true;
                    i = (i + 1).min(f.len() - 1);
                }
                while i < f.len() - 1 && f[i].is_ascii_digit() {
                    spec.width = spec.width * 10 + usize::from(f[i] - b'0');
                    i += 1;
                }
                if f[i] == b'.' && i < f.len() - 1 {
                    i += 1;
                    let mut precision = 0;
                    while i < f.len() - 1 && f[i].is_ascii_digit() {
                        precision = precision * 10 + usize::from(f[i] - b'0');
                        i += 1;
                    }
                    spec.precision = Some(precision);
                }
                percent(out, f[i], &spec, message, props, mid, now);
            }
            b'@' if i + 1 < f.len() => {
                i += 1;
                match f[i] {
                    b'@' => out.push(b'@'),
                    b'N' => out.extend_from_slice(format!("{:09}", now.nanos).as_bytes()),
                    code => out.extend_from_slice(strftime(code, now).as_bytes()),
                }
            }
            b'\\' if i + 1 < f.len() => {
                i += 1;
                match f[i] {
                    b'\\' => out.push(b'\\'),
                    b'0' => out.push(0),
                    b'a' => out.push(7),
                    b'e' => out.push(0x1B),
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'v' => out.push(0x0B),
                    _ => {}
                }
            }
            // A lone trailing %, @ or \ prints nothing, as in mosquitto_sub.
            b'%' | b'@' | b'\\' => {}
            other => out.push(other),
        }
        i += 1;
    }
}

fn percent(
    out: &mut Vec<u8>,
    code: u8,
    spec: &Spec,
    message: &Message,
    props: &Properties,
    mid: u16,
    now: Now,
) {
    match code {
        b'%' => out.push(b'%'),
        b'A' => int(out, spec, props.topic_alias.map(u64::from)),
        b'C' => match &props.content_type {
            Some(value) => text(out, spec, value.as_str()),
            None => out.extend(std::iter::repeat_n(b' ', spec.width)),
        },
        b'D' => {
            if let Some(data) = &props.correlation_data {
                out.extend_from_slice(data);
            }
        }
        b'E' => int(out, spec, props.message_expiry_interval.map(u64::from)),
        b'F' => int(out, spec, props.payload_format_indicator.map(u64::from)),
        b'I' => text(out, spec, &iso8601(now)),
        b'j' => json(out, message, mid, now, true),
        b'J' => json(out, message, mid, now, false),
        b'l' => int(out, spec, Some(message.payload.len() as u64)),
        b'm' => int(out, spec, Some(u64::from(mid))),
        b'P' => {
            let pairs: Vec<String> = props
                .user_properties
                .iter()
                .map(|(k, v)| format!("{}:{}", k.as_str(), v.as_str()))
                .collect();
            out.extend_from_slice(pairs.join(" ").as_bytes());
        }
        b'p' => payload(out, spec, &message.payload, None),
        b'q' => out.push(b'0' + message.qos.as_u8()),
        b'R' => {
            if let Some(topic) = &props.response_topic {
                text(out, spec, topic.as_str());
            }
        }
        b'r' => out.push(if message.retain { b'1' } else { b'0' }),
        b'S' => int(
            out,
            spec,
            props
                .subscription_identifiers
                .first()
                .map(|&id| u64::from(id)),
        ),
        b't' => text(out, spec, &message.topic),
        b'U' => out.extend_from_slice(format!("{}.{:09}", now.secs, now.nanos).as_bytes()),
        b'x' => payload(out, spec, &message.payload, Some(false)),
        b'X' => payload(out, spec, &message.payload, Some(true)),
        _ => {}
    }
}

/// A JSON string as cJSON (mosquitto_sub 2.0's) prints a C string: it ends at the first NUL
/// byte; quotes, backslashes and control characters are escaped, other bytes go as they are.
fn json_string(out: &mut Vec<u8>, value: &[u8]) {
    out.push(b'"');
    for &byte in value.iter().take_while(|&&b| b != 0) {
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0C => out.extend_from_slice(b"\\f"),
            b if b < 0x20 => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            b => out.push(b),
        }
    }
    out.push(b'"');
}

/// `%j` / `%J`: mosquitto_sub's JSON line. Properties in the order the wire carries them
/// (by identifier, as Tern encodes them); user properties as one object.
fn json(out: &mut Vec<u8>, message: &Message, mid: u16, now: Now, escaped: bool) {
    let (y, mo, d, h, mi, s) = civil(now.secs);
    out.extend_from_slice(
        format!(
            "{{\"tst\":\"{y}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:06}Z+0000\",\"topic\":",
            now.nanos / 1000
        )
        .as_bytes(),
    );
    json_string(out, message.topic.as_bytes());
    out.extend_from_slice(
        format!(
            ",\"qos\":{},\"retain\":{},\"payloadlen\":{}",
            message.qos.as_u8(),
            u8::from(message.retain),
            message.payload.len()
        )
        .as_bytes(),
    );
    if message.qos.as_u8() > 0 {
        out.extend_from_slice(format!(",\"mid\":{mid}").as_bytes());
    }
    let p = &message.properties;
    let mut fields: Vec<Vec<u8>> = Vec::new();
    if let Some(v) = p.payload_format_indicator {
        fields.push(format!("\"payload-format-indicator\":{}", u8::from(v)).into_bytes());
    }
    if let Some(v) = p.message_expiry_interval {
        fields.push(format!("\"message-expiry-interval\":{v}").into_bytes());
    }
    let string_field = |name: &str, value: &[u8]| {
        let mut field = format!("\"{name}\":").into_bytes();
        json_string(&mut field, value);
        field
    };
    if let Some(v) = &p.content_type {
        fields.push(string_field("content-type", v.as_str().as_bytes()));
    }
    if let Some(v) = &p.response_topic {
        fields.push(string_field("response-topic", v.as_str().as_bytes()));
    }
    if let Some(v) = &p.correlation_data {
        fields.push(string_field("correlation-data", v));
    }
    for id in &p.subscription_identifiers {
        fields.push(format!("\"subscription-identifier\":{id}").into_bytes());
    }
    if let Some(v) = p.topic_alias {
        fields.push(format!("\"topic-alias\":{v}").into_bytes());
    }
    if !p.user_properties.is_empty() {
        let mut users = b"\"user-properties\":{".to_vec();
        for (n, (k, v)) in p.user_properties.iter().enumerate() {
            if n > 0 {
                users.push(b',');
            }
            json_string(&mut users, k.as_str().as_bytes());
            users.push(b':');
            json_string(&mut users, v.as_str().as_bytes());
        }
        users.push(b'}');
        fields.push(users);
    }
    if !fields.is_empty() {
        out.extend_from_slice(b",\"properties\":{");
        out.extend_from_slice(&fields.join(&b',')[..]);
        out.push(b'}');
    }
    out.extend_from_slice(b",\"payload\":");
    let body = &message.payload[..];
    if body.is_empty() {
        out.extend_from_slice(b"null");
    } else if escaped {
        json_string(out, body);
    } else {
        out.extend_from_slice(body);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_client::QoS;

    fn message() -> Message {
        let mut message = Message::new("f/1", "hello", QoS::AtMostOnce);
        message.retain = true;
        message
    }

    fn render(format: &str) -> String {
        let mut out = Vec::new();
        let now = Now {
            secs: 1_796_598_479,
            nanos: 775_104_829,
        };
        formatted(&mut out, format, &message(), 0, now);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Issue 13 (-F as mosquitto_sub): the output mosquitto_sub 2.0.11 printed for this format.
    #[test]
    fn format_codes_as_mosquitto_sub() {
        assert_eq!(
            render(r"%t|%q|%r|%l|%x|%X|%5.2t|%-8t|%08l|%p|\t|%%|%m"),
            "f/1|0|1|5|68656c6c6f|68656C6C6F|   f/|f/1     |00000005|hello|\t|%|0"
        );
    }

    #[test]
    fn time_codes_in_utc() {
        assert_eq!(render("%I"), "2026-12-06T23:07:59+0000");
        assert_eq!(
            render("@Y-@m-@dT@H:@M:@S.@N"),
            "2026-12-06T23:07:59.775104829"
        );
        assert_eq!(render("%U"), "1796598479.775104829");
    }

    #[test]
    fn json_as_mosquitto_sub() {
        assert_eq!(
            render("%j"),
            "{\"tst\":\"2026-12-06T23:07:59.775104Z+0000\",\"topic\":\"f/1\",\"qos\":0,\
             \"retain\":1,\"payloadlen\":5,\"payload\":\"hello\"}"
        );
    }
}
