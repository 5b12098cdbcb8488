//! Issue 13, the dashboard in a real headless browser (Debian's `chromium`): the page, served
//! by the admin listener over a fake backend with two clients, takes the token from the URL
//! fragment, polls the API and shows the clients, the retained messages and the store's
//! state; with a wrong token it asks for one. A screenshot is kept under
//! target/tmp/dashboard/. Skipped, with a message, when chromium is not installed
//! (tests/interop/install-clients.sh installs it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_admin::testing::FakeBackend;
use tern_admin::{AdminOptions, Token};

const TOKEN: &str = "dashboard-test-token-0123456789";
/// The browser is killed past this (a hung browser must not hang the suite).
const BROWSER_DEADLINE: Duration = Duration::from_secs(90);

fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

fn serve(fake: &FakeBackend) -> SocketAddr {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let backend = Arc::new(fake.clone());
    std::thread::spawn(move || {
        let options = AdminOptions::new(Token::new(TOKEN).unwrap());
        let _ = runtime.block_on(tern_admin::serve(
            listener,
            backend,
            options,
            std::future::pending(),
        ));
    });
    addr
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless chromium on `url` with `args`; its stdout.
fn browse(browser: &Path, profile: &str, url: &str, args: &[&str]) -> String {
    let profile = artifacts().join(format!("profile-{profile}-{}", std::process::id()));
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
        out
    });
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > BROWSER_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {BROWSER_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&profile);
    reader.join().unwrap()
}

/// Issue 13: "the test starts Tern, connects clients, loads the page and checks that it shows
/// them, and keeps a screenshot as a test artifact".
#[test]
fn dashboard_shows_clients_retained_and_store_in_chromium() {
    let Some(browser) = chromium() else {
        eprintln!(
            "skipped: chromium is not installed (tests/interop/install-clients.sh installs it)"
        );
        return;
    };
    let fake = FakeBackend::sample();
    fake.lock().traffic_per_poll = (50, 120);
    let addr = serve(&fake);
    let url = format!("http://{addr}/#token={TOKEN}");
    let dom = browse(&browser, "dom", &url, &["--dump-dom"]);
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page never loaded the stats:\n{dom}"
    );
    for client in ["alpha", "beta"] {
        assert!(
            dom.contains(&format!("data-client-id=\"{client}\"")),
            "client {client} not shown:\n{dom}"
        );
    }
    assert!(dom.contains("<td class=\"client-id\">alpha</td>"), "{dom}");
    assert!(dom.contains("user-beta"), "{dom}");
    assert!(
        dom.contains("data-topic=\"sensors/temp\""),
        "retained topic not shown:\n{dom}"
    );
    assert!(
        dom.contains("<dd id=\"store-state\">accepting</dd>"),
        "store state not shown:\n{dom}"
    );
    assert!(dom.contains("id=\"stat-connections\">2<"), "{dom}");
    assert!(dom.contains("class=\"pill ok\">ready<"), "{dom}");
    // Traffic between two polls shows as a rate.
    assert!(
        !dom.contains("id=\"stat-rate-out\">0.0<"),
        "no message rate:\n{dom}"
    );
    // The token left the URL (not in the history, not in a screenshot's address bar): the
    // page marks it once `replaceState` has removed the fragment.
    assert!(
        dom.contains("data-fragment-cleared=\"true\""),
        "the fragment was not removed:\n{dom}"
    );
    assert!(!dom.contains(TOKEN), "the token is in the DOM");

    let shot = artifacts().join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &browser,
        "shot",
        &url,
        &[
            "--window-size=1280,1100",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());
}

/// With a wrong token the page asks for one and shows no data.
#[test]
fn dashboard_asks_for_the_token_when_refused() {
    let Some(browser) = chromium() else {
        eprintln!("skipped: chromium is not installed");
        return;
    };
    let addr = serve(&FakeBackend::sample());
    let dom = browse(
        &browser,
        "refused",
        &format!("http://{addr}/#token=not-the-right-token-at-all"),
        &["--dump-dom"],
    );
    assert!(dom.contains("The token was refused."), "{dom}");
    assert!(dom.contains("<main id=\"main\" hidden=\"\">"), "{dom}");
    assert!(!dom.contains("data-client-id"), "{dom}");
}

/// What the kick test adds to the page: confirms every dialog, clicks the first Kick button
/// once the page has loaded, and marks that it did.
const KICK_SCRIPT: &str = r##"
window.confirm = () => true;
const kicker = setInterval(() => {
  if (document.body.dataset.loaded !== "true") return;
  const button = document.querySelector("#clients button.danger");
  if (!button) return;
  clearInterval(kicker);
  button.click();
  document.body.dataset.kickClicked = "true";
}, 100);
"##;

/// The admin router plus a test page: the dashboard's own page with [`KICK_SCRIPT`] loaded
/// after app.js (same origin, so the page's CSP allows it).
fn serve_with_kick_page(fake: &FakeBackend) -> SocketAddr {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let backend = Arc::new(fake.clone());
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let router = tern_admin::router(backend, AdminOptions::new(Token::new(TOKEN).unwrap()));
            let index = {
                use tower::ServiceExt;
                let response = router
                    .clone()
                    .oneshot(
                        axum::http::Request::get("/")
                            .body(axum::body::Body::empty())
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                let body = http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .unwrap();
                String::from_utf8(body.to_bytes().to_vec()).unwrap()
            };
            let page = index.replace(
                "</head>",
                "<script src=\"/test/kick.js\" defer></script></head>",
            );
            assert_ne!(page, index, "the page has no </head>");
            let router = router
                .route(
                    "/test/kick.html",
                    axum::routing::get(move || async move { axum::response::Html(page) }),
                )
                .route(
                    "/test/kick.js",
                    axum::routing::get(|| async {
                        (
                            [(axum::http::header::CONTENT_TYPE, "text/javascript")],
                            KICK_SCRIPT,
                        )
                    }),
                );
            let _ = axum::serve(listener, router).await;
        });
    });
    addr
}

/// Review 13 #3: after a kick from the dashboard the page keeps polling (the charts and the
/// list do not freeze): the fake saw the kick, and `stats` calls went on after it.
#[test]
fn dashboard_keeps_polling_after_a_kick() {
    let Some(browser) = chromium() else {
        eprintln!("skipped: chromium is not installed");
        return;
    };
    let fake = FakeBackend::sample();
    let addr = serve_with_kick_page(&fake);
    let dom = browse(
        &browser,
        "kick",
        &format!("http://{addr}/test/kick.html#token={TOKEN}"),
        &["--dump-dom"],
    );
    assert!(
        dom.contains("data-kick-clicked=\"true\""),
        "no kick clicked:\n{dom}"
    );
    let state = fake.lock();
    assert_eq!(state.kicked, vec!["alpha".to_owned()], "{dom}");
    assert!(
        state.stats_calls >= state.stats_calls_at_kick + 2,
        "polling stopped after the kick: {} stats calls, {} at the kick",
        state.stats_calls,
        state.stats_calls_at_kick
    );
    assert!(
        !dom.contains("data-client-id=\"alpha\""),
        "alpha still listed:\n{dom}"
    );
}
