//! The dashboard in a real browser: headless Chromium driven through chromedriver
//! (WebDriver, `fantoccini`) against the `taskq-api` and `taskq-worker` binaries on a
//! real Redis and MongoDB. Needs Debian's `chromium` and `chromium-driver`
//! (`scripts/setup.sh` installs them).
//!
//! Screenshots of every page, light and dark, are written to `target/ui-screenshots/`
//! and checked for content (pixel variance; dark darker than light).

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;
use serde_json::{Value, json};
use taskq_redis::WorkerInfo;
use taskq_testkit::{ChildGuard, free_port, mongo_uri, wait_until, workspace_bin};

use crate::harness::{Env, serve_router};

const READ: &str = "read-token-0123456789abcdef";
const SUBMIT: &str = "submit-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef";
const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The api and worker processes, chromedriver and the test's HTTP endpoint.
struct Stack {
    _env: Env,
    api: String,
    _api: ChildGuard,
    _worker: ChildGuard,
    _driver: ChildGuard,
    driver: String,
    /// Base URL of the test's endpoint that the `http` tasks call.
    hook: String,
    /// While set, the endpoint answers 500.
    failing: Arc<AtomicBool>,
    http: reqwest::Client,
}

/// An endpoint answering 500 while `failing` is set, 200 otherwise.
async fn flaky_endpoint() -> (String, Arc<AtomicBool>) {
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let f = f.clone();
            async move {
                if f.load(Ordering::SeqCst) {
                    (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down")
                } else {
                    (axum::http::StatusCode::OK, "ok")
                }
            }
        }),
    );
    let url = format!("http://{}", serve_router(app).await);
    (url, failing)
}

fn find_binary(names: &[&str]) -> String {
    // GitHub's runners name the directory of their chromedriver in CHROMEWEBDRIVER.
    if names.contains(&"chromedriver")
        && let Ok(dir) = std::env::var("CHROMEWEBDRIVER")
    {
        let p = std::path::Path::new(&dir).join("chromedriver");
        if p.is_file() {
            return p.display().to_string();
        }
    }
    for n in names {
        if let Ok(out) = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {n}"))
            .output()
            && out.status.success()
        {
            return String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
    }
    panic!(
        "none of {names:?} is installed: the dashboard tests need Debian's `chromium` and \
         `chromium-driver` (run scripts/setup.sh, or apt-get install chromium chromium-driver)"
    );
}

impl Stack {
    async fn start() -> Stack {
        let env = Env::start().await;
        let (hook, failing) = flaky_endpoint().await;
        let port = free_port();
        let api = format!("http://127.0.0.1:{port}");
        let periodic = json!([{"name": "heartbeat", "cron": "*/2 * * * * *",
            "task": {"type": "noop", "queue": "periodic"}}]);
        let api_proc = ChildGuard::spawn_logged(
            "taskq-api",
            Command::new(workspace_bin("taskq-api"))
                .env("TASKQ_LISTEN", format!("127.0.0.1:{port}"))
                .env("TASKQ_REDIS_URL", env.redis.url())
                .env("TASKQ_MONGODB_URI", mongo_uri())
                .env("TASKQ_MONGODB_DATABASE", &env.db)
                .env(
                    "TASKQ_TOKENS",
                    format!("read:{READ},submit:{SUBMIT},admin:{ADMIN}"),
                )
                .env("TASKQ_UI", "on")
                .env(
                    "TASKQ_UI_TRACE_URL",
                    "https://trace.example/trace/{trace_id}",
                )
                .env("TASKQ_PERIODIC", periodic.to_string())
                .env("TASKQ_IDEMPOTENCY_TTL_SECONDS", "600")
                .env("TASKQ_RETENTION_SECONDS", "0")
                .env("RUST_LOG", "warn"),
        );
        let worker = ChildGuard::spawn_logged(
            "taskq-worker",
            Command::new(workspace_bin("taskq-worker"))
                .env("TASKQ_LISTEN", format!("127.0.0.1:{}", free_port()))
                .env("TASKQ_REDIS_URL", env.redis.url())
                .env("TASKQ_MONGODB_URI", mongo_uri())
                .env("TASKQ_MONGODB_DATABASE", &env.db)
                .env("TASKQ_QUEUES", "default,emails,slow,periodic")
                .env("TASKQ_CONCURRENCY", "8")
                .env("TASKQ_PROMOTE_INTERVAL_MS", "50")
                .env("TASKQ_HTTP_ALLOW", format!("{hook}/"))
                .env("TASKQ_WORKER_ID", "ui-test-worker")
                .env("RUST_LOG", "warn"),
        );
        let driver_port = free_port();
        let driver_proc = ChildGuard::spawn_logged(
            "chromedriver",
            Command::new(find_binary(&["chromedriver"])).arg(format!("--port={driver_port}")),
        );
        let driver = format!("http://127.0.0.1:{driver_port}");
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let ready = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            let (http, api) = (http.clone(), api.clone());
            async move {
                http.get(format!("{api}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::OK)
            }
        })
        .await;
        assert!(ready, "the api did not become ready:\n{}", api_proc.log());
        let up = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            let (http, d) = (http.clone(), driver.clone());
            async move { http.get(format!("{d}/status")).send().await.is_ok() }
        })
        .await;
        assert!(up, "chromedriver did not start:\n{}", driver_proc.log());
        Stack {
            _env: env,
            api,
            _api: api_proc,
            _worker: worker,
            _driver: driver_proc,
            driver,
            hook,
            failing,
            http,
        }
    }

    async fn submit(&self, task: Value) -> String {
        let r = self
            .http
            .post(format!("{}/v1/tasks", self.api))
            .bearer_auth(ADMIN)
            .header("traceparent", TRACE)
            .json(&task)
            .send()
            .await
            .expect("submit");
        assert_eq!(r.status(), StatusCode::CREATED);
        let v: Value = r.json().await.expect("json");
        v["id"].as_str().expect("id").to_owned()
    }

    async fn status(&self, id: &str) -> String {
        let v: Value = self
            .http
            .get(format!("{}/v1/tasks/{id}", self.api))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        v["status"].as_str().unwrap_or_default().to_owned()
    }

    async fn wait_status(&self, id: &str, status: &str) {
        let ok = wait_until(
            Duration::from_secs(20),
            Duration::from_millis(100),
            || async { self.status(id).await == status },
        )
        .await;
        assert!(
            ok,
            "task {id} never became {status}: {}",
            self.status(id).await
        );
    }

    /// A new browser session signed in with `token`.
    async fn browser(&self, token: &str) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": find_binary(&["chromium", "chromium-browser", "google-chrome"]),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1000"]
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let c = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.driver)
            .await
            .expect("a chromium session");
        c.goto(&format!("{}/ui/login", self.api))
            .await
            .expect("login page");
        c.find(Locator::Css("#token"))
            .await
            .expect("token field")
            .send_keys(token)
            .await
            .expect("type");
        click(&c, "form button[type=submit]").await;
        let mut url = c.current_url().await.expect("url");
        for _ in 0..50 {
            if !url.path().starts_with("/ui/login") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            url = c.current_url().await.expect("url");
        }
        assert!(
            !url.path().starts_with("/ui/login"),
            "sign-in failed: still at {url}:\n{}",
            c.source().await.unwrap_or_default()
        );
        c
    }
}

/// The element `css` selects, waiting up to 10 s for it (a click may return before the
/// page it leads to has loaded).
async fn find(c: &Client, css: &str) -> fantoccini::elements::Element {
    for _ in 0..100 {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no element {css}; page:\n{}",
        c.source().await.unwrap_or_default()
    );
}

async fn click(c: &Client, css: &str) {
    find(c, css)
        .await
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

async fn text(c: &Client, css: &str) -> String {
    find(c, css).await.text().await.unwrap_or_default()
}

async fn count(c: &Client, css: &str) -> usize {
    c.find_all(Locator::Css(css)).await.map_or(0, |v| v.len())
}

/// Waits up to 10 s for `css` to select exactly `n` elements.
async fn wait_count(c: &Client, css: &str, n: usize) {
    for _ in 0..100 {
        if count(c, css).await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{css}: {} elements, not {n}; page:\n{}",
        count(c, css).await,
        c.source().await.unwrap_or_default()
    );
}

/// Waits up to 10 s for the browser to be at a URL whose path and query satisfy `ok`.
async fn wait_url(c: &Client, what: &str, ok: impl Fn(&url::Url) -> bool) -> url::Url {
    for _ in 0..100 {
        if let Ok(u) = c.current_url().await
            && ok(&u)
        {
            return u;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never reached {what}: at {:?}", c.current_url().await);
}

async fn attr(c: &Client, css: &str, name: &str) -> Option<String> {
    find(c, css).await.attr(name).await.ok()?
}

/// Reloads `url` until `check` holds (up to 20 s).
async fn until_page(c: &Client, url: &str, what: &str, check: impl AsyncFn(&Client) -> bool) {
    for _ in 0..100 {
        c.goto(url).await.expect("goto");
        if check(c).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "{what}: never seen at {url}; page:\n{}",
        c.source().await.unwrap_or_default()
    );
}

/// The value of the header `name` of `r`, when it is text.
fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Asserts that `r` redirects (303) to `location`; `what` names the case.
#[track_caller]
fn assert_redirect(r: &reqwest::Response, location: &str, what: &str) {
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "{what}");
    assert_eq!(header(r, "location"), Some(location), "{what}");
}

/// Polls the current page, without reloading it, until `check` holds; panics with `what`
/// if it does not within `timeout`.
async fn until_shown(
    c: &Client,
    what: &str,
    timeout: Duration,
    check: impl AsyncFn(&Client) -> bool,
) {
    let shown = wait_until(timeout, Duration::from_millis(100), || check(c)).await;
    assert!(shown, "{what}");
}

/// `fetch` from inside the page (same origin, the session's cookie): the status of a
/// POST of `body` to `path`.
async fn page_post(c: &Client, path: &str, body: &str) -> u64 {
    let v = c
        .execute(
            "const [p, b] = arguments; return fetch(p, {method: 'POST', body: b, \
             headers: {'content-type': 'application/x-www-form-urlencoded'}, redirect: 'manual'}) \
             .then(r => r.status);",
            vec![json!(path), json!(body)],
        )
        .await
        .expect("fetch");
    v.as_u64().unwrap_or(0)
}

/// A chromedriver command outside WebDriver: a Chrome DevTools Protocol call.
#[derive(Debug)]
struct Cdp(Value);

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!(
            "session/{}/goog/cdp/execute",
            session.unwrap_or("")
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.0.to_string()))
    }
}

async fn color_scheme(c: &Client, scheme: &str) {
    c.issue_cmd(Cdp(json!({
        "cmd": "Emulation.setEmulatedMedia",
        "params": {"features": [{"name": "prefers-color-scheme", "value": scheme}]}
    })))
    .await
    .expect("emulate color scheme");
}

fn screenshot_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("exe");
    // target/<profile>/deps/<test> -> target/ui-screenshots
    let target = exe
        .ancestors()
        .nth(3)
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| std::path::PathBuf::from("target"));
    let dir = target.join("ui-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// Mean and variance of the luminance of a PNG.
fn luminance(png_bytes: &[u8]) -> (f64, f64) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("png size")];
    let info = reader.next_frame(&mut buf).expect("png frame");
    let channels = info.color_type.samples();
    let px: Vec<f64> = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|p| {
            let (r, g, b) = if channels >= 3 {
                (p[0], p[1], p[2])
            } else {
                (p[0], p[0], p[0])
            };
            0.2126 * f64::from(r) + 0.7152 * f64::from(g) + 0.0722 * f64::from(b)
        })
        .collect();
    let n = px.len().max(1) as f64;
    let mean = px.iter().sum::<f64>() / n;
    let var = px.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var)
}

/// Screenshots of the current page (after going to `url`, when given) in light and dark,
/// saved as `<name>-light.png` and `<name>-dark.png`, each checked to hold content, the
/// dark one darker.
async fn screenshots(c: &Client, url: Option<&str>, name: &str) {
    let dir = screenshot_dir();
    if let Some(url) = url {
        c.goto(url).await.expect("goto");
    }
    let mut means = Vec::new();
    for scheme in ["light", "dark"] {
        color_scheme(c, scheme).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let png = c.screenshot().await.expect("screenshot");
        let (mean, var) = luminance(&png);
        assert!(
            var > 50.0,
            "{name} ({scheme}) looks blank: luminance variance {var:.1}"
        );
        std::fs::write(dir.join(format!("{name}-{scheme}.png")), &png).expect("write png");
        means.push(mean);
    }
    assert!(
        means[1] < means[0] - 40.0,
        "{name}: the dark theme is not darker (mean luminance light {:.0}, dark {:.0})",
        means[0],
        means[1]
    );
    color_scheme(c, "light").await;
}

/// The body of a dashboard page fetched with `cookie`.
async fn page_html(http: &reqwest::Client, url: &str, cookie: &str) -> String {
    let r = http
        .get(url)
        .header("cookie", cookie)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK, "{url}");
    r.text().await.expect("html")
}

/// The CSRF token in a page's forms.
fn csrf_in(html: &str) -> String {
    html.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a csrf field")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_in_headless_chromium() {
    let s = Stack::start().await;
    let ui = |p: &str| format!("{}{p}", s.api);

    // Tasks: three `http` tasks that die (the endpoint fails), two `fail` tasks that die,
    // one with a payload to search for, one long `sleep` to cancel.
    let hook = format!("{}/hook", s.hook);
    let mut dead_http = Vec::new();
    for i in 0..3 {
        dead_http.push(
            s.submit(json!({"type": "http", "payload": {"url": hook, "body": {"n": i}}, "max_attempts": 1}))
                .await,
        );
    }
    let mut dead_fail = Vec::new();
    for _ in 0..2 {
        dead_fail.push(
            s.submit(json!({"type": "fail", "payload": {"permanent": true}, "max_attempts": 1}))
                .await,
        );
    }
    let acme = s
        .submit(json!({"type": "echo", "payload": {"customer": "acme-4711"}}))
        .await;
    let sleeper = s
        .submit(
            json!({"type": "sleep", "payload": {"ms": 120000, "progress_every_ms": 200}, "queue": "slow", "key": "tenant-9"}),
        )
        .await;
    for id in dead_http.iter().chain(&dead_fail) {
        s.wait_status(id, "dead").await;
    }
    s.wait_status(&acme, "succeeded").await;
    s.wait_status(&sleeper, "running").await;

    // --- read token: every page renders, no action is offered, actions are refused.
    let c = s.browser(READ).await;
    for (path, heading) in [
        ("/ui", "Queues"),
        ("/ui/tasks", "Tasks"),
        (&format!("/ui/tasks/{acme}") as &str, "Task"),
        ("/ui/periodic", "Periodic"),
        ("/ui/workers", "Workers"),
        ("/ui/queues/default", "Queue default"),
    ] {
        c.goto(&ui(path)).await.expect("goto");
        let h1 = text(&c, "h1").await;
        assert!(h1.starts_with(heading), "{path}: heading {h1:?}");
        assert_eq!(
            count(&c, "form[action$='/action']").await,
            0,
            "{path} offers actions"
        );
        assert_eq!(count(&c, "#bulk").await, 0, "{path} offers bulk actions");
    }
    // The queue's page lists its busiest keys (the running sleeper's).
    c.goto(&ui("/ui/queues/slow")).await.expect("goto");
    let keys = text(&c, "main").await;
    assert!(
        keys.contains("Busiest keys") && keys.contains("tenant-9"),
        "{keys}"
    );
    let csrf = attr(&c, "form[action='/ui/logout'] input[name=csrf]", "value")
        .await
        .expect("the read session's csrf token");
    let dead = &dead_fail[0];
    assert_eq!(
        page_post(
            &c,
            &format!("/ui/tasks/{dead}/action"),
            &format!("csrf={csrf}&op=retry")
        )
        .await,
        403,
        "a read session retried a task"
    );
    assert_eq!(
        page_post(
            &c,
            "/ui/queues/default/action",
            &format!("csrf={csrf}&op=pause")
        )
        .await,
        403
    );
    assert_eq!(s.status(dead).await, "dead");
    c.close().await.expect("close");

    // --- admin token.
    let c = s.browser(ADMIN).await;

    // Workers and periodic pages show the live worker and the schedule's task.
    until_page(&c, &ui("/ui/workers"), "the worker", async |c| {
        count(c, "tr[data-worker='ui-test-worker']").await == 1
    })
    .await;
    until_page(&c, &ui("/ui/periodic"), "the schedule's task", async |c| {
        count(c, "#schedules a[href^='/ui/tasks/']").await == 1
    })
    .await;

    // Filter the dead `http` tasks with the form, bulk-retry them, watch them succeed.
    c.goto(&ui("/ui/tasks")).await.expect("goto");
    c.find(Locator::Css("#filters input[name=type]"))
        .await
        .expect("type")
        .send_keys("http")
        .await
        .expect("type");
    c.find(Locator::Css(
        "#filters select[name=status] option[value=dead]",
    ))
    .await
    .expect("dead option")
    .click()
    .await
    .expect("select dead");
    click(&c, "#filters button[type=submit]").await;
    // The filters are in the URL, in a short form worth sharing.
    wait_url(&c, "the filtered list", |u| {
        u.query() == Some("status=dead&type=http")
    })
    .await;
    wait_count(&c, "#tasks tbody tr", 3).await;
    assert_eq!(count(&c, "#tasks tbody tr[data-status=dead]").await, 3);
    s.failing.store(false, Ordering::SeqCst);
    click(&c, "#bulk button[value='retry:matching']").await;
    assert_eq!(
        attr(&c, "#confirm-count", "data-touches").await.as_deref(),
        Some("3"),
        "the confirmation states how many tasks it retries"
    );
    screenshots(&c, None, "confirm").await;
    click(&c, "#confirm").await;
    assert!(text(&c, ".notice").await.contains("Queued 3"));
    until_page(
        &c,
        &ui("/ui/tasks?type=http"),
        "three succeeded http tasks",
        async |c| count(c, "#tasks tbody tr[data-status=succeeded]").await == 3,
    )
    .await;

    // Bulk on a selection: delete the two dead `fail` tasks.
    c.goto(&ui("/ui/tasks?type=fail")).await.expect("goto");
    for id in &dead_fail {
        click(&c, &format!("input[name=ids][value='{id}']")).await;
    }
    click(&c, "#bulk button[value='delete:selected']").await;
    assert_eq!(
        attr(&c, "#confirm-count", "data-touches").await.as_deref(),
        Some("2")
    );
    click(&c, "#confirm").await;
    assert!(text(&c, ".notice").await.contains("Deleted 2"));
    wait_count(&c, "#tasks tbody tr", 0).await;

    // Open a retried task and follow its attempts: the failed one and the one that
    // succeeded, each with its worker; the trace id links to the trace UI.
    c.goto(&ui("/ui/tasks?type=http")).await.expect("goto");
    click(&c, &format!("a[href='/ui/tasks/{}']", dead_http[0])).await;
    wait_count(&c, "#attempts tbody tr", 2).await;
    let attempts = text(&c, "#attempts").await;
    assert!(attempts.contains("ui-test-worker"), "{attempts}");
    assert!(
        attempts.contains("dead") && attempts.contains("succeeded"),
        "{attempts}"
    );
    let timeline = text(&c, "#timeline").await;
    assert!(
        timeline.contains("queued") && timeline.contains("running"),
        "{timeline}"
    );
    assert_eq!(
        attr(&c, "a[href^='https://trace.example/']", "href")
            .await
            .as_deref(),
        Some("https://trace.example/trace/4bf92f3577b34da6a3ce929d0e0e4736")
    );

    // Search by a payload substring, reaching the search field with the `/` key.
    c.goto(&ui("/ui/tasks")).await.expect("goto");
    find(&c, "#tasks").await;
    tokio::time::sleep(Duration::from_millis(300)).await; // ui.js is deferred
    // (Keys go to a focusable row: rows take the focus for j/k navigation.)
    find(&c, "#tasks tbody tr")
        .await
        .send_keys("/")
        .await
        .expect("press /");
    let focused = c.active_element().await.expect("focus");
    assert_eq!(
        focused.attr("id").await.ok().flatten().as_deref(),
        Some("search"),
        "`/` does not focus the search"
    );
    focused.send_keys("acme-47").await.expect("type");
    click(&c, "#filters button[type=submit]").await;
    wait_url(&c, "the search", |u| u.query() == Some("q=acme-47")).await;
    wait_count(&c, "#tasks tbody tr", 1).await;
    assert_eq!(
        attr(&c, "#tasks tbody tr", "data-id").await.as_deref(),
        Some(acme.as_str())
    );

    // A running task's page shows its handler's latest progress; cancel it.
    until_page(
        &c,
        &ui(&format!("/ui/tasks/{sleeper}")),
        "the running task's progress",
        async |c| {
            count(c, "#progress").await == 1 && text(c, "#progress").await.contains("\"slept_ms\"")
        },
    )
    .await;
    click(&c, "button[value=cancel]").await;
    until_page(
        &c,
        &ui(&format!("/ui/tasks/{sleeper}")),
        "the cancelled task",
        async |c| count(c, "h1 .st-cancelled").await == 1,
    )
    .await;

    // Pause a queue while tasks run in it: its running count falls to 0 on the live
    // overview (refreshed by htmx), and a new task stays queued.
    for _ in 0..3 {
        s.submit(json!({"type": "sleep", "payload": {"ms": 4000}, "queue": "emails"}))
            .await;
    }
    c.goto(&ui("/ui")).await.expect("goto");
    let running = "tr[data-queue=emails] td[data-count=running]";
    until_shown(
        &c,
        "the overview never showed the emails tasks running",
        Duration::from_secs(10),
        async |c| text(c, running).await.trim() != "0",
    )
    .await;
    // (On the queue's page: the overview's rows are swapped every few seconds.)
    c.goto(&ui("/ui/queues/emails")).await.expect("goto");
    click(&c, "button[value=pause]").await;
    until_shown(
        &c,
        "the queue's page does not say it is paused",
        Duration::from_secs(10),
        async |c| text(c, "h1").await.contains("(paused)"),
    )
    .await;
    let later = s.submit(json!({"type": "noop", "queue": "emails"})).await;
    c.goto(&ui("/ui")).await.expect("goto");
    // No reload: the live part is swapped in by htmx every 3 s.
    until_shown(
        &c,
        "the running count of the paused queue never fell to 0",
        Duration::from_secs(20),
        async |c| text(c, running).await.trim() == "0",
    )
    .await;
    assert_eq!(
        s.status(&later).await,
        "queued",
        "a paused queue ran a task"
    );
    assert!(text(&c, "tr[data-queue=emails]").await.contains("paused"));

    // CSRF: a forged POST without the token (or with a wrong one) is refused.
    assert_eq!(
        page_post(&c, "/ui/queues/default/action", "op=pause").await,
        403
    );
    assert_eq!(
        page_post(&c, "/ui/queues/default/action", "op=pause&csrf=forged").await,
        403
    );
    c.goto(&ui("/ui/queues/default")).await.expect("goto");
    assert!(!text(&c, "h1").await.contains("paused"));

    // The pages run no inline script.
    let src = c.source().await.expect("source");
    for tag in src.split("<script").skip(1) {
        let head = tag.split('>').next().unwrap_or_default();
        assert!(
            head.contains("src=\"/ui/assets/"),
            "an inline script: <script{head}>"
        );
    }

    // Screenshots of every page, light and dark.
    for (path, name) in [
        ("/ui".to_owned(), "overview"),
        ("/ui/tasks".to_owned(), "tasks"),
        (format!("/ui/tasks/{}", dead_http[0]), "task"),
        ("/ui/queues/emails".to_owned(), "queue"),
        ("/ui/periodic".to_owned(), "periodic"),
        ("/ui/workers".to_owned(), "workers"),
    ] {
        screenshots(&c, Some(&ui(&path)), name).await;
    }
    c.close().await.expect("close");
    let signin = s.browser(SUBMIT).await;
    // A submit token sees tasks (as GET /v1/tasks allows) and nothing queue-wide.
    wait_url(&signin, "the task list", |u| u.path() == "/ui/tasks").await;
    assert_eq!(count(&signin, "#bulk").await, 0);
    let csrf = attr(
        &signin,
        "form[action='/ui/logout'] input[name=csrf]",
        "value",
    )
    .await
    .expect("the submit session's csrf token");
    assert_eq!(
        page_post(
            &signin,
            &format!("/ui/tasks/{acme}/action"),
            &format!("csrf={csrf}&op=delete")
        )
        .await,
        403,
        "a submit session deleted a task"
    );
    assert_eq!(s.status(&acme).await, "succeeded");
    signin.goto(&ui("/ui/workers")).await.expect("goto");
    assert!(text(&signin, "h1").await.starts_with("403"));
    signin.close().await.expect("close");
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(serde_json::Map::from_iter([(
            "goog:chromeOptions".to_owned(),
            json!({"binary": find_binary(&["chromium", "chromium-browser", "google-chrome"]), "args": ["--headless=new", "--no-sandbox", "--window-size=1400,1000"]}),
        )]))
        .connect(&s.driver)
        .await
        .expect("session");
    screenshots(&c, Some(&ui("/ui/login")), "login").await;
    c.close().await.expect("close");
}

/// The headers and refusals of the dashboard over plain HTTP: the CSP, the cookie's
/// attributes, CSRF and origin checks, the read role in the api itself.
#[tokio::test(flavor = "multi_thread")]
async fn dashboard_security_headers_csrf_and_roles() {
    let env = Env::start_with(|mut s| {
        s.tokens = Some(Arc::new(
            taskq_api::Tokens::parse(&format!("read:{READ},admin:{ADMIN}")).expect("tokens"),
        ));
        s
    })
    .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let api = &env.api;

    // Signed out: pages redirect to the sign-in page; the sign-in page is strict too.
    let r = http
        .get(format!("{api}/ui/tasks?q=x"))
        .send()
        .await
        .expect("get");
    assert_redirect(&r, "/ui/login?next=%2Fui%2Ftasks%3Fq%3Dx", "signed out");
    let r = http
        .get(format!("{api}/ui/login"))
        .send()
        .await
        .expect("get");
    let csp = header(&r, "content-security-policy")
        .unwrap_or_default()
        .to_owned();
    assert_eq!(csp, taskq_api::ui::CSP);
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
    assert_eq!(header(&r, "x-frame-options"), Some("DENY"));

    // A wrong token is refused; a good one gets the strict cookie.
    let sign_in = async |form: &[(&str, &str)]| {
        http.post(format!("{api}/ui/login"))
            .form(form)
            .send()
            .await
            .expect("post")
    };
    let r = sign_in(&[("token", "not-a-valid-token-at-all")]).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = sign_in(&[("token", ADMIN), ("next", "https://evil.example/")]).await;
    assert_redirect(&r, "/ui", "an outside `next` is not followed");
    let cookie = header(&r, "set-cookie").unwrap_or_default().to_owned();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(attr), "cookie without {attr}: {cookie}");
    }
    assert!(
        !cookie.contains(ADMIN),
        "the cookie holds the token in clear"
    );
    let session = cookie.split(';').next().unwrap_or_default().to_owned();

    // A queue to act on.
    let r = http
        .post(format!("{api}/v1/tasks"))
        .bearer_auth(ADMIN)
        .json(&json!({"type": "noop"}))
        .send()
        .await
        .expect("submit");
    assert_eq!(r.status(), StatusCode::CREATED);
    let page = http
        .get(format!("{api}/ui/queues/default"))
        .header("cookie", &session)
        .send()
        .await
        .expect("get");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("html");
    let csrf = csrf_in(&html);
    let post = |body: String, origin: Option<&'static str>| {
        let mut r = http
            .post(format!("{api}/ui/queues/default/action"))
            .header("cookie", &session)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    assert_eq!(
        post("op=pause".into(), None).await.expect("post").status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(
            format!("op=pause&csrf={csrf}"),
            Some("https://evil.example")
        )
        .await
        .expect("post")
        .status(),
        StatusCode::FORBIDDEN
    );
    let q: taskq_core::QueueName = "default".parse().expect("queue");
    assert!(!env.broker.is_paused(&q).await.expect("paused"));
    assert_eq!(
        post(format!("op=pause&csrf={csrf}"), None)
            .await
            .expect("post")
            .status(),
        StatusCode::SEE_OTHER
    );
    assert!(env.broker.is_paused(&q).await.expect("paused"));
    // Bad input is a 4xx page, never a 5xx.
    for body in [
        format!("op=explode&csrf={csrf}"),
        format!("op=limits&rate=fast&csrf={csrf}"),
        format!("op=limits&rate=-1&csrf={csrf}"),
    ] {
        let st = post(body.clone(), None).await.expect("post").status();
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    }
    for path in [
        "/ui/tasks/not-an-id",
        "/ui/tasks?status=finished",
        "/ui/tasks?cursor=zzz",
        "/ui/tasks?from=yesterday",
        "/ui/tasks?bogus=1",
        "/ui/queues/bad%20name",
    ] {
        let st = http
            .get(format!("{api}{path}"))
            .header("cookie", &session)
            .send()
            .await
            .expect("get")
            .status();
        assert_eq!(st, StatusCode::BAD_REQUEST, "{path}");
    }

    // The read role in the api: every GET, nothing else.
    for path in ["/v1/queues", "/v1/tasks"] {
        let get = http
            .get(format!("{api}{path}"))
            .bearer_auth(READ)
            .send()
            .await
            .expect("get");
        assert_eq!(get.status(), StatusCode::OK, "{path}");
    }
    for (path, body) in [
        ("/v1/tasks", json!({"type": "noop"})),
        ("/v1/queues/default/resume", json!({})),
    ] {
        let r = http
            .post(format!("{api}{path}"))
            .bearer_auth(READ)
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
    }
}

/// The worker registry: a running worker is listed with its queues and slots, a
/// registration that is not renewed disappears after its TTL, and a worker that stops
/// gracefully removes its own at once.
#[tokio::test(flavor = "multi_thread")]
async fn worker_registry_lists_live_workers_only() {
    let env = Env::start().await;
    let mut settings = Env::settings("default,emails");
    settings.worker_id = "registry-test".into();
    let w = env.worker(settings, Env::builtins());
    let listed = wait_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            env.broker
                .workers()
                .await
                .is_ok_and(|ws| ws.iter().any(|w| w.id == "registry-test"))
        },
    )
    .await;
    assert!(listed, "the running worker never registered");
    let ws = env.broker.workers().await.expect("workers");
    let me = ws.iter().find(|w| w.id == "registry-test").expect("listed");
    assert_eq!(me.queues, vec!["default".to_owned(), "emails".to_owned()]);
    assert_eq!(me.slots, 16);
    assert!(me.seen_ms >= me.started_ms);
    w.shutdown().await;
    assert!(
        env.broker
            .workers()
            .await
            .expect("workers")
            .iter()
            .all(|w| w.id != "registry-test"),
        "a stopped worker is still listed"
    );

    // A worker that dies (no renewal) vanishes after its TTL.
    let now = taskq_core::now_ms();
    let ghost = worker_info("ghost".into(), "nowhere", 4, 1, now);
    env.broker
        .heartbeat_worker(&ghost, Duration::from_millis(300))
        .await
        .expect("heartbeat");
    assert_eq!(env.broker.workers().await.expect("workers"), vec![ghost]);
    let gone = wait_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async { env.broker.workers().await.is_ok_and(|ws| ws.is_empty()) },
    )
    .await;
    assert!(gone, "a worker that stopped heartbeating is still listed");
}

/// Per-minute throughput: a finished minute's per-second counters are summed once into
/// the minute's sums, which the history reports after the per-second counters are gone.
#[tokio::test(flavor = "multi_thread")]
async fn throughput_history_keeps_rolled_up_minutes() {
    let env = Env::start().await;
    let q: taskq_core::QueueName = "emails".parse().expect("queue");
    let mut c = redis::Client::open(env.redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    // Minute m: 3 successes in its second 5, 2 failures in its second 59.
    let m: i64 = 29_000_000;
    let keys = taskq_redis::QueueKeys::new(&q);
    let ok = keys.counter(taskq_redis::Counter::Succeeded, (m * 60 + 5) * 1000);
    let err = keys.counter(taskq_redis::Counter::Failed, (m * 60 + 59) * 1000);
    let counters = redis::pipe().set(&ok, 3).set(&err, 2).clone();
    let _: () = counters.query_async(&mut c).await.expect("counters");
    let roll_up = async |at_ms: i64| env.broker.roll_up_minute(&q, at_ms).await.expect("roll up");
    // Not yet two seconds into the next minute: nothing is rolled up.
    let next = (m + 1) * 60_000;
    let history = async || {
        env.broker
            .throughput_history(&q, next + 3 * 60_000, 10)
            .await
            .expect("history")
    };
    roll_up(next + 1_000).await;
    let _: String = redis::cmd("FLUSHALL")
        .query_async(&mut c)
        .await
        .expect("flush");
    let h = history().await;
    assert!(h.iter().all(|x| x.succeeded == 0 && x.failed == 0), "{h:?}");
    let _: () = counters.query_async(&mut c).await.expect("counters");
    roll_up(next + 2_500).await;
    // A second roll-up (another worker) changes nothing.
    roll_up(next + 4_000).await;
    let _: i64 = redis::cmd("DEL")
        .arg(&ok)
        .arg(&err)
        .query_async(&mut c)
        .await
        .expect("del");
    let h = history().await;
    assert_eq!(h.len(), 10);
    let minute = h
        .iter()
        .find(|x| x.minute_ms == m * 60_000)
        .expect("minute m");
    assert_eq!((minute.succeeded, minute.failed), (3, 2), "{h:?}");
    assert_eq!(h.iter().map(|x| x.succeeded + x.failed).sum::<u64>(), 5);
}

/// The task list's order, cursor pages and time range, over HTTP against MongoDB:
/// 120 records created one second apart.
#[tokio::test(flavor = "multi_thread")]
async fn task_list_pages_sorts_and_filters_by_time() {
    let env = Env::start().await;
    let base = chrono::Utc::now() - chrono::Duration::hours(2);
    let limits = taskq_core::Limits::default();
    let mut ids = Vec::new();
    let mut recs = Vec::new();
    for i in 0..120u64 {
        let created = base + chrono::Duration::seconds(i as i64);
        let task = taskq_core::NewTask {
            kind: "t".into(),
            queue: Some("search".into()),
            ..Default::default()
        };
        let mut rec = limits.admit(task, created, None).expect("admit");
        let ms = u64::try_from(created.timestamp_millis()).expect("ms");
        rec.id = format!("{:08x}-{:04x}-7000-8000-{i:012x}", ms >> 16, ms & 0xffff)
            .parse()
            .expect("a v7 id");
        ids.push(rec.id.to_string());
        recs.push(rec);
    }
    env.store.insert_many(&recs).await.expect("insert");
    let http = reqwest::Client::new();
    // Authentication is off in this api: any session value signs in.
    let page = |q: String| {
        let http = http.clone();
        let url = format!("{}/ui/tasks?{q}", env.api);
        async move {
            let r = http
                .get(url)
                .header("cookie", "taskq_ui=dGVzdA")
                .send()
                .await
                .expect("get");
            assert_eq!(r.status(), StatusCode::OK);
            let html = r.text().await.expect("html");
            let rows: Vec<String> = html
                .split("data-id=\"")
                .skip(1)
                .filter_map(|s| s.split('"').next().map(str::to_owned))
                .collect();
            let next = html
                .split("cursor=")
                .nth(1)
                .and_then(|s| s.split('"').next().map(str::to_owned));
            (rows, next)
        }
    };
    // Newest first, three pages.
    let (p1, c1) = page("queue=search".into()).await;
    assert_eq!(p1.len(), 50);
    assert_eq!(p1[0], ids[119]);
    let (p2, c2) = page(format!("queue=search&cursor={}", c1.expect("a next page"))).await;
    assert_eq!(p2.first(), Some(&ids[69]));
    let (p3, c3) = page(format!("queue=search&cursor={}", c2.expect("a next page"))).await;
    assert_eq!(p3.len(), 20);
    assert_eq!(p3.last(), Some(&ids[0]));
    assert_eq!(c3, None, "a next page after the last one");
    // Oldest first.
    let (o1, _) = page("queue=search&sort=oldest".into()).await;
    assert_eq!(o1[..3], ids[..3]);
    // Created in [base+10 s, base+20 s).
    let t = |s: i64| {
        (base + chrono::Duration::seconds(s))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            .replace(':', "%3A")
            .replace('+', "%2B")
    };
    let (r, _) = page(format!("queue=search&from={}&to={}", t(10), t(20))).await;
    let mut want: Vec<String> = ids[10..20].to_vec();
    want.reverse();
    assert_eq!(r, want);
}

/// A bulk action on everything a filter matches touches no more tasks than its
/// confirmation stated; `TASKQ_UI=read-only` refuses every action, `off` serves no page.
#[tokio::test(flavor = "multi_thread")]
async fn bulk_actions_keep_to_the_confirmed_count_and_ui_modes_hold() {
    let env = Env::start().await;
    // Five queued tasks (no worker runs).
    for _ in 0..5 {
        env.submit(json!({"type": "noop", "queue": "held"})).await;
    }
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let cookie = "taskq_ui=dGVzdA";
    let html = page_html(&http, &format!("{}/ui/tasks?queue=held", env.api), cookie).await;
    let csrf = csrf_in(&html);
    let bulk = |body: String| {
        http.post(format!("{}/ui/tasks/bulk", env.api))
            .header("cookie", cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    // The confirmation states 5; confirming 3 cancels 3.
    let confirm = bulk(format!("csrf={csrf}&op=cancel%3Amatching&queue=held"))
        .await
        .expect("post");
    assert_eq!(confirm.status(), StatusCode::OK);
    let page = confirm.text().await.expect("html");
    assert!(page.contains("data-touches=\"5\""), "{page}");
    let done = bulk(format!(
        "csrf={csrf}&op=cancel%3Amatching&queue=held&confirm=yes&n=3&return=%2Fui%2Ftasks%3Fqueue%3Dheld"
    ))
    .await
    .expect("post");
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        header(&done, "location"),
        Some("/ui/tasks?queue=held&notice=cancelled&n=3")
    );
    let counts = env.counts().await;
    assert_eq!(counts.get(&taskq_core::TaskStatus::Cancelled), Some(&3));
    assert_eq!(counts.get(&taskq_core::TaskStatus::Queued), Some(&2));
    // Malformed bulk requests are 400s.
    for body in [
        format!("csrf={csrf}&op=explode%3Amatching"),
        format!("csrf={csrf}&op=retry%3Aselected"),
        format!("csrf={csrf}&op=retry%3Aselected&ids=nope"),
        format!("csrf={csrf}&op=retry%3Amatching&confirm=yes"),
        format!("csrf={csrf}&op=retry%3Amatching&status=bogus"),
    ] {
        let st = bulk(body.clone()).await.expect("post").status();
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    }

    // TASKQ_UI=read-only: pages render without actions; actions are refused.
    let mode = |m| {
        taskq_api::ui::UiConfig::new(
            &taskq_api::ui::UiArgs {
                mode: m,
                trace_url: None,
            },
            vec![],
        )
        .expect("ui config")
    };
    let ro = Env::start_with(|mut s| {
        s.ui = Arc::new(mode(taskq_api::ui::UiMode::ReadOnly));
        s
    })
    .await;
    ro.submit(json!({"type": "noop"})).await;
    let html = page_html(&http, &format!("{}/ui/tasks", ro.api), cookie).await;
    assert!(
        !html.contains("id=\"bulk\""),
        "read-only offers bulk actions"
    );
    let csrf = csrf_in(&html);
    let r = http
        .post(format!("{}/ui/queues/default/action", ro.api))
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&op=pause"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // TASKQ_UI=off: no page.
    let off = Env::start_with(|mut s| {
        s.ui = Arc::new(mode(taskq_api::ui::UiMode::Off));
        s
    })
    .await;
    for path in ["/ui", "/ui/login", "/ui/assets/htmx.min.js"] {
        let st = http
            .get(format!("{}{path}", off.api))
            .send()
            .await
            .expect("get")
            .status();
        assert_eq!(st, StatusCode::NOT_FOUND, "{path}");
    }
}

/// A worker of the `default` queue running no listed task, started and seen at `now_ms`,
/// as its heartbeat reports it.
fn worker_info(id: String, host: &str, slots: u32, busy: u32, now_ms: i64) -> WorkerInfo {
    WorkerInfo {
        id,
        host: host.into(),
        queues: vec!["default".into()],
        slots,
        busy,
        started_ms: now_ms,
        tasks: vec![],
        seen_ms: now_ms,
    }
}

/// The worker registry and the throughput history on a three-master Redis Cluster:
/// every call stays within one slot.
#[tokio::test(flavor = "multi_thread")]
async fn worker_registry_and_history_work_on_a_redis_cluster() {
    let env = Env::start_on_cluster().await;
    let now = taskq_core::now_ms();
    for i in 0..3 {
        let w = worker_info(format!("cluster-worker-{i}"), "pod", 8, 0, now);
        env.broker
            .heartbeat_worker(&w, Duration::from_secs(30))
            .await
            .expect("heartbeat on a cluster");
    }
    assert_eq!(env.broker.workers().await.expect("workers").len(), 3);
    env.broker
        .deregister_worker("cluster-worker-0")
        .await
        .expect("deregister");
    assert_eq!(env.broker.workers().await.expect("workers").len(), 2);
    for q in ["default", "emails", "a-third-queue"] {
        let q: taskq_core::QueueName = q.parse().expect("queue");
        env.broker
            .roll_up_minute(&q, now - now % 60_000 + 3_000)
            .await
            .expect("roll up on a cluster");
        let h = env
            .broker
            .throughput_history(&q, now, 60)
            .await
            .expect("history on a cluster");
        assert_eq!(h.len(), 60);
    }
}
