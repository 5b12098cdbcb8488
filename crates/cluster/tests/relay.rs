//! The fault-injecting relay itself (issue 16, "Partitions without root": pass, drop,
//! blackhole, delay, one-way), on a plain echo server: each mode does what the partition
//! tests rely on, and a change of mode reaches live connections.

use std::net::SocketAddr;
use std::time::Duration;

use tern_cluster::testing::{Direction, Mode, Relay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(5);

/// An echo server on loopback.
async fn echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn read_exact(stream: &mut TcpStream, n: usize, within: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; n];
    match tokio::time::timeout(within, stream.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Some(buf),
        _ => None,
    }
}

/// Whether the connection was closed (end of stream or reset) within `within`.
async fn closed(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Pass forwards both ways; Drop closes a live connection at once and every new one.
#[tokio::test]
async fn pass_forwards_and_drop_closes_live_and_new_connections() {
    let relay = Relay::start(echo().await).await.unwrap();
    let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    assert_eq!(
        read_exact(&mut stream, 4, WAIT).await.as_deref(),
        Some(&b"ping"[..])
    );
    relay.set(Mode::Drop);
    assert!(
        closed(&mut stream, WAIT).await,
        "a live connection is closed by Drop"
    );
    let mut again = TcpStream::connect(relay.addr()).await.unwrap();
    assert!(
        closed(&mut again, WAIT).await,
        "a new connection is closed at once"
    );
    relay.set(Mode::Pass);
    let mut healed = TcpStream::connect(relay.addr()).await.unwrap();
    healed.write_all(b"pong").await.unwrap();
    assert_eq!(
        read_exact(&mut healed, 4, WAIT).await.as_deref(),
        Some(&b"pong"[..])
    );
    assert_eq!(relay.accepted(), 3);
}

/// Blackhole holds what is sent on a live connection (nothing comes back, nothing is
/// closed) and lets it through once the mode passes again; a connection made in the black
/// hole is held too.
#[tokio::test]
async fn blackhole_holds_bytes_and_connections_until_it_ends() {
    let relay = Relay::start(echo().await).await.unwrap();
    let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
    stream.write_all(b"a").await.unwrap();
    assert_eq!(
        read_exact(&mut stream, 1, WAIT).await.as_deref(),
        Some(&b"a"[..])
    );
    relay.set(Mode::Blackhole);
    stream.write_all(b"held").await.unwrap();
    let mut fresh = TcpStream::connect(relay.addr()).await.unwrap();
    fresh.write_all(b"new").await.unwrap();
    assert_eq!(
        read_exact(&mut stream, 4, Duration::from_millis(300)).await,
        None
    );
    assert_eq!(
        read_exact(&mut fresh, 3, Duration::from_millis(100)).await,
        None
    );
    relay.set(Mode::Pass);
    assert_eq!(
        read_exact(&mut stream, 4, WAIT).await.as_deref(),
        Some(&b"held"[..])
    );
    assert_eq!(
        read_exact(&mut fresh, 3, WAIT).await.as_deref(),
        Some(&b"new"[..])
    );
}

/// Delay forwards each chunk after the delay (each way), in order.
#[tokio::test]
async fn delay_forwards_late_and_in_order() {
    let relay = Relay::start(echo().await).await.unwrap();
    relay.set(Mode::Delay(Duration::from_millis(100)));
    let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
    let started = std::time::Instant::now();
    for chunk in [&b"one"[..], b"two", b"three"] {
        stream.write_all(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let echoed = read_exact(&mut stream, 11, WAIT).await.unwrap();
    assert_eq!(echoed, b"onetwothree");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "delayed there and back: {:?}",
        started.elapsed()
    );
}

/// One-way: bytes towards the echo server pass, its answers are held until the link heals;
/// the reverse holds the requests themselves.
#[tokio::test]
async fn one_way_passes_one_direction_only() {
    let target = echo().await;
    let relay = Relay::start(target).await.unwrap();
    relay.set(Mode::OneWay(Direction::Forward));
    let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
    stream.write_all(b"req").await.unwrap();
    assert_eq!(
        read_exact(&mut stream, 3, Duration::from_millis(300)).await,
        None
    );
    // The request did arrive: the echo is waiting in the relay.
    let deadline = tokio::time::Instant::now() + WAIT;
    while relay
        .stats()
        .forward_bytes
        .load(std::sync::atomic::Ordering::Relaxed)
        < 3
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    relay.set(Mode::Pass);
    assert_eq!(
        read_exact(&mut stream, 3, WAIT).await.as_deref(),
        Some(&b"req"[..])
    );

    relay.set(Mode::OneWay(Direction::Backward));
    stream.write_all(b"lost").await.unwrap();
    assert_eq!(
        read_exact(&mut stream, 4, Duration::from_millis(300)).await,
        None
    );
    assert_eq!(
        relay
            .stats()
            .forward_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        3,
        "the request is held in the relay"
    );
    relay.set(Mode::Pass);
    assert_eq!(
        read_exact(&mut stream, 4, WAIT).await.as_deref(),
        Some(&b"lost"[..])
    );
}

/// A forgotten connection goes silent for good (not closed); a new one passes.
#[tokio::test]
async fn forgotten_connections_go_silent_and_new_ones_pass() {
    let relay = Relay::start(echo().await).await.unwrap();
    let mut old = TcpStream::connect(relay.addr()).await.unwrap();
    old.write_all(b"a").await.unwrap();
    assert_eq!(
        read_exact(&mut old, 1, WAIT).await.as_deref(),
        Some(&b"a"[..])
    );
    relay.forget_connections();
    old.write_all(b"b").await.unwrap();
    assert_eq!(
        read_exact(&mut old, 1, Duration::from_millis(300)).await,
        None
    );
    let mut new = TcpStream::connect(relay.addr()).await.unwrap();
    new.write_all(b"c").await.unwrap();
    assert_eq!(
        read_exact(&mut new, 1, WAIT).await.as_deref(),
        Some(&b"c"[..])
    );
    assert_eq!(
        read_exact(&mut old, 1, Duration::from_millis(100)).await,
        None
    );
}
