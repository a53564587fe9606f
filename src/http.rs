//! Owns health checks over HTTP: GET with retries and capped backoff until a wanted status or a deadline;
//! it knows nothing of scripts and never follows a URL it was not given.

use std::time::{Duration, Instant};

use crate::cancel::Cancel;

/// Which statuses count as healthy.
#[derive(Debug, Clone)]
pub enum Expect {
    /// Any 2xx status.
    Success,
    /// One of these statuses.
    Any(Vec<u16>),
}

impl Expect {
    fn matches(&self, status: u16) -> bool {
        match self {
            Expect::Success => (200..300).contains(&status),
            Expect::Any(list) => list.contains(&status),
        }
    }
}

/// What a check sends and which answers count as healthy.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Wanted statuses.
    pub expect: Expect,
    /// Request headers, e.g. `X-Tenant-ID`.
    pub headers: Vec<(String, String)>,
    /// Whether a redirect (3xx) counts as healthy: it is never followed, only its `Location` is read.
    pub redirect_ok: bool,
    /// A redirect whose `Location` path starts with one of these (e.g. a maintenance page) never counts as
    /// healthy: it is retried like a bad status.
    pub redirect_bad: Vec<String>,
}

impl Probe {
    /// A plain GET wanting `expect`, no headers, redirects unwanted.
    pub fn new(expect: Expect) -> Probe {
        Probe {
            expect,
            headers: Vec::new(),
            redirect_ok: false,
            redirect_bad: Vec::new(),
        }
    }

    /// Why an answer is not healthy, `None` when it is.
    fn problem(&self, status: u16, location: Option<&str>) -> Option<String> {
        let path = location.map(location_path);
        if let (Some(path), Some(loc)) = (path, location)
            && self
                .redirect_bad
                .iter()
                .any(|bad| path.starts_with(bad.as_str()))
        {
            return Some(format!("status {status}, a redirect to {loc}"));
        }
        if self.expect.matches(status) || (self.redirect_ok && (300..400).contains(&status)) {
            return None;
        }
        Some(match location {
            Some(loc) if (300..400).contains(&status) => {
                format!("status {status}, a redirect to {loc}")
            }
            _ => format!("status {status}"),
        })
    }
}

/// The path of a `Location` value, which may be absolute (`http://host/maint?x`) or relative (`/maint?x`).
fn location_path(location: &str) -> &str {
    let rest = location
        .split_once("://")
        .map_or(location, |(_, r)| r.find('/').map_or("/", |i| &r[i..]));
    rest.split(['?', '#']).next().unwrap_or(rest)
}

/// At most this much of a body is kept: health answers are small, and a check must not buffer a page.
const BODY_LIMIT: u64 = 64 * 1024;

/// What a check saw.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    /// Whether a wanted status arrived before the deadline.
    pub ok: bool,
    /// The last status seen (0 when no response ever arrived).
    pub status: u16,
    /// The last response's body (at most 64 KiB, lossy UTF-8), empty when none arrived.
    pub body: String,
    /// The last response's `Location` header, if any.
    pub location: Option<String>,
    /// How many requests were made.
    pub attempts: u32,
    /// Time from the first request to the verdict.
    pub elapsed: Duration,
    /// The last transport error or unexpected status, for failure messages.
    pub last_problem: Option<String>,
    /// True when the check stopped because it was cancelled.
    pub cancelled: bool,
}

/// The pauses between a health check's requests: `first`, then a quarter longer each time up to
/// [`PACE_CAP`] (or `first` when that is longer). A service coming up answers a moment after its port
/// opens, and the check should see it within a small part of the time it waited: a pause is about a
/// quarter to a third of the time spent so far (from 50 ms: at most ~0.3 s late around 1 s), and never
/// more than 500 ms once the cap is reached. The price is requests, ~2 a second at the cap: from 50 ms a
/// backend that takes 5 s to start sees 17 and one that takes 30 s sees 67 (each a refused connection
/// or a small answer on loopback), against 6 and 18 with the doubling from 200 ms to 2 s this replaced.
#[derive(Debug, Clone)]
pub struct Pacing {
    next: Duration,
    cap: Duration,
}

/// The first pause when a script names no `interval`.
pub const FIRST_PAUSE: Duration = Duration::from_millis(50);

/// The longest pause between two requests of a check, unless its interval asks for more.
pub const PACE_CAP: Duration = Duration::from_millis(500);

/// The shortest first pause: a script cannot make a check spin.
pub const PACE_FLOOR: Duration = Duration::from_millis(10);

impl Pacing {
    /// Pauses starting at `first` (at least [`PACE_FLOOR`]).
    pub fn new(first: Duration) -> Pacing {
        let first = first.max(PACE_FLOOR);
        Pacing {
            next: first,
            cap: first.max(PACE_CAP),
        }
    }
}

impl Iterator for Pacing {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let pause = self.next;
        self.next = (pause + pause / 4).min(self.cap);
        Some(pause)
    }
}

/// Polls `url` with GET until an answer satisfies `probe` or `timeout` passes, pausing between requests
/// as [`Pacing`] says from `interval`.
pub fn check(
    url: &str,
    probe: &Probe,
    timeout: Duration,
    interval: Duration,
    cancel: &Cancel,
) -> Checked {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut seen = Checked::default();
    let mut pauses = Pacing::new(interval);
    let (ok, cancelled) = loop {
        seen.attempts += 1;
        if ask(url, probe, deadline, &mut seen) {
            break (true, false);
        }
        let now = Instant::now();
        if now >= deadline || cancel.is_cancelled() {
            break (false, cancel.is_cancelled());
        }
        let pause = pauses.next().unwrap_or(PACE_CAP);
        if !pause_until((now + pause).min(deadline), cancel) {
            break (false, true);
        }
    };
    Checked {
        ok,
        cancelled,
        elapsed: start.elapsed(),
        ..seen
    }
}

/// One GET: records its answer (or the transport error) in `seen`; true when the answer is healthy.
fn ask(url: &str, probe: &Probe, deadline: Instant, seen: &mut Checked) -> bool {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(50));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(left.min(Duration::from_secs(10))))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let mut request = agent.get(url);
    for (name, value) in &probe.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    match request.call() {
        Ok(mut response) => {
            seen.status = response.status().as_u16();
            seen.location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            seen.body = response
                .body_mut()
                .with_config()
                .limit(BODY_LIMIT)
                .read_to_vec()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            seen.last_problem = probe.problem(seen.status, seen.location.as_deref());
            seen.last_problem.is_none()
        }
        Err(e) => {
            // After an answer, a transport error (the deadline cutting the last request short, or the
            // service going away) keeps what that answer said: "status 503" tells more than "timeout".
            let answered = (seen.status != 0)
                .then(|| probe.problem(seen.status, seen.location.as_deref()))
                .flatten();
            seen.last_problem = Some(match answered {
                Some(said) => format!("{e}; the answer before: {said}"),
                None => e.to_string(),
            });
            false
        }
    }
}

/// Sleeps until `wake` in short slices, so that a cancel is seen promptly; false when cancelled.
fn pause_until(wake: Instant, cancel: &Cancel) -> bool {
    while Instant::now() < wake {
        if cancel.is_cancelled() {
            return false;
        }
        std::thread::sleep(
            wake.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50)),
        );
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// Serves the given statuses in order, one connection each, on a loopback port.
    fn server(statuses: Vec<u16>) -> (String, std::thread::JoinHandle<()>) {
        answers(statuses.into_iter().map(|s| (s, String::new())).collect())
    }

    /// Serves (status, extra header lines) in order, one connection each; returns the requests seen.
    fn answers(replies: Vec<(u16, String)>) -> (String, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api/v1/health", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            for (status, extra) in replies {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                // The echo lets a test see which headers arrived.
                let tenant = request
                    .lines()
                    .find_map(|l| l.strip_prefix("x-tenant-id: "))
                    .unwrap_or("none")
                    .to_string();
                let body = format!("tenant={tenant}");
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, handle)
    }

    /// How many requests a check makes in `window` when the service never answers (requests take no time).
    fn requests_within(first: Duration, window: Duration) -> usize {
        let mut at = Duration::ZERO;
        1 + Pacing::new(first)
            .take_while(|p| {
                at += *p;
                at <= window
            })
            .count()
    }

    #[test]
    fn the_pace_starts_at_the_interval_grows_by_a_quarter_and_stops_at_the_cap() {
        let ms = |n: u64| Duration::from_millis(n);
        let pauses: Vec<Duration> = Pacing::new(FIRST_PAUSE).take(14).collect();
        assert_eq!(pauses[0], ms(50));
        assert_eq!(pauses[1], Duration::from_micros(62_500));
        for w in pauses.windows(2) {
            assert!(w[1] == PACE_CAP || w[1] == w[0] + w[0] / 4, "{pauses:?}");
        }
        // The cap is reached within the first ~2.6 s and held.
        let to_cap = pauses.iter().position(|p| *p == PACE_CAP).unwrap();
        assert_eq!(to_cap, 11, "{pauses:?}");
        assert!(pauses[..to_cap].iter().sum::<Duration>() < ms(2700));
        assert!(pauses[to_cap..].iter().all(|p| *p == PACE_CAP));
        // What a slow start costs in requests: modest, ~2 a second at the cap.
        assert_eq!(requests_within(FIRST_PAUSE, ms(1000)), 9);
        assert_eq!(requests_within(FIRST_PAUSE, ms(5000)), 17);
        assert_eq!(requests_within(FIRST_PAUSE, ms(30_000)), 67);
        // An interval above the cap is kept as it is; one below the floor is raised to it.
        assert!(Pacing::new(ms(2000)).take(5).all(|p| p == ms(2000)));
        assert_eq!(Pacing::new(ms(600)).nth(3), Some(ms(600)));
        assert_eq!(Pacing::new(Duration::ZERO).next(), Some(PACE_FLOOR));
    }

    #[test]
    fn requests_are_spaced_at_least_as_the_pace_says() {
        // Five 503s, then 200: the gaps between the requests the server sees are never shorter than the
        // schedule's pauses (a busy machine can only make them longer).
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/health", listener.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for status in [503, 503, 503, 503, 503, 200] {
                let (mut s, _) = listener.accept().unwrap();
                seen.push(Instant::now());
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
            seen
        });
        let interval = Duration::from_millis(20);
        let c = check(
            &url,
            &Probe::new(Expect::Success),
            Duration::from_secs(10),
            interval,
            &Cancel::new(),
        );
        let seen = h.join().unwrap();
        assert!(c.ok && c.attempts == 6, "{c:?}");
        for (gap, pause) in seen.windows(2).zip(Pacing::new(interval)) {
            assert!(
                gap[1] - gap[0] >= pause,
                "{:?} < {pause:?}",
                gap[1] - gap[0]
            );
        }
    }

    #[test]
    fn retries_until_the_wanted_status() {
        let (url, h) = server(vec![503, 503, 200]);
        let c = check(
            &url,
            &Probe::new(Expect::Success),
            Duration::from_secs(10),
            Duration::from_millis(10),
            &Cancel::new(),
        );
        h.join().unwrap();
        assert!(c.ok);
        assert_eq!((c.status, c.attempts), (200, 3));
    }

    #[test]
    fn gives_up_at_the_deadline_and_reports_the_last_problem() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let url = format!("http://127.0.0.1:{port}/");
        let c = check(
            &url,
            &Probe::new(Expect::Success),
            Duration::from_millis(300),
            Duration::from_millis(20),
            &Cancel::new(),
        );
        assert!(!c.ok);
        // Never more requests than the pace allows in the timeout, plus one at the deadline (load can only
        // make fewer).
        let most = requests_within(Duration::from_millis(20), Duration::from_millis(300)) + 1;
        assert!(
            c.attempts >= 2 && c.attempts as usize <= most,
            "{c:?}, at most {most}"
        );
        assert_eq!(c.status, 0);
        assert!(c.last_problem.is_some());
    }

    #[test]
    fn explicit_expectation() {
        let (url, h) = server(vec![404]);
        let c = check(
            &url,
            &Probe::new(Expect::Any(vec![404])),
            Duration::from_secs(5),
            Duration::from_millis(10),
            &Cancel::new(),
        );
        h.join().unwrap();
        assert!(c.ok && c.status == 404);
    }

    #[test]
    fn headers_are_sent_and_the_body_is_kept() {
        let (url, h) = server(vec![200]);
        let mut probe = Probe::new(Expect::Success);
        probe.headers.push(("X-Tenant-ID".into(), "blue".into()));
        let c = check(
            &url,
            &probe,
            Duration::from_secs(5),
            Duration::from_millis(10),
            &Cancel::new(),
        );
        h.join().unwrap();
        assert!(c.ok);
        assert_eq!(c.body, "tenant=blue");
    }

    #[test]
    fn a_redirect_is_healthy_when_allowed_unless_it_goes_to_a_bad_page() {
        let to = |loc: &str| (302, format!("location: {loc}\r\n"));
        let mut probe = Probe::new(Expect::Success);
        probe.redirect_ok = true;
        probe.redirect_bad = vec!["/maint".into()];
        // Two redirects to the maintenance page (absolute, then relative) are retried; a setup page is fine.
        let (url, h) = answers(vec![
            to("http://127.0.0.1:1/maint?from=%2F"),
            to("/maint"),
            to("/storykeep/init"),
        ]);
        let c = check(
            &url,
            &probe,
            Duration::from_secs(5),
            Duration::from_millis(10),
            &Cancel::new(),
        );
        h.join().unwrap();
        assert!(c.ok, "{c:?}");
        assert_eq!(
            (c.attempts, c.location.as_deref()),
            (3, Some("/storykeep/init"))
        );

        // Enough answers for every retry within the timeout; the server thread is left waiting.
        let (url, _h) = answers(vec![to("/maint?from=%2F"); 100]);
        let c = check(
            &url,
            &probe,
            Duration::from_millis(100),
            Duration::from_millis(10),
            &Cancel::new(),
        );
        assert!(!c.ok);
        assert_eq!(
            c.last_problem.as_deref(),
            Some("status 302, a redirect to /maint?from=%2F")
        );

        let (url, _h) = answers(vec![to("/elsewhere"); 100]);
        let plain = Probe::new(Expect::Success);
        let c = check(
            &url,
            &plain,
            Duration::from_millis(100),
            Duration::from_millis(10),
            &Cancel::new(),
        );
        assert!(!c.ok, "a redirect is not healthy unless allowed");
    }

    #[test]
    fn a_last_request_cut_short_still_reports_the_answer_before_it() {
        // 503 once, then a connection that is accepted but never answered, until the deadline.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api/v1/health", listener.local_addr().unwrap());
        let _h = std::thread::spawn(move || {
            let mut held = Vec::new();
            for (i, stream) in listener.incoming().enumerate() {
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                if i == 0 {
                    let _ = write!(
                        s,
                        "HTTP/1.1 503 X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                } else {
                    held.push(s);
                }
            }
        });
        let c = check(
            &url,
            &Probe::new(Expect::Success),
            Duration::from_millis(500),
            Duration::from_millis(10),
            &Cancel::new(),
        );
        assert!(!c.ok);
        let problem = c.last_problem.unwrap();
        assert!(
            problem.contains("timeout") && problem.ends_with("; the answer before: status 503"),
            "{problem}"
        );
    }
}
