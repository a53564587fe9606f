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

/// What a check saw.
#[derive(Debug, Clone)]
pub struct Checked {
    /// Whether a wanted status arrived before the deadline.
    pub ok: bool,
    /// The last status seen (0 when no response ever arrived).
    pub status: u16,
    /// How many requests were made.
    pub attempts: u32,
    /// Time from the first request to the verdict.
    pub elapsed: Duration,
    /// The last transport error or unexpected status, for failure messages.
    pub last_problem: Option<String>,
    /// True when the check stopped because it was cancelled.
    pub cancelled: bool,
}

/// Polls `url` with GET until a status matches `expect` or `timeout` passes; backoff starts at
/// `interval` and doubles up to 2 s, because a restarting service usually needs a moment, not a minute.
pub fn check(
    url: &str,
    expect: &Expect,
    timeout: Duration,
    interval: Duration,
    cancel: &Cancel,
) -> Checked {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut attempts = 0;
    let mut status = 0;
    let mut last_problem;
    let mut pause = interval.max(Duration::from_millis(10));
    loop {
        attempts += 1;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(50));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(left.min(Duration::from_secs(10))))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        match agent.get(url).call() {
            Ok(response) => {
                status = response.status().as_u16();
                if expect.matches(status) {
                    return Checked {
                        ok: true,
                        status,
                        attempts,
                        elapsed: start.elapsed(),
                        last_problem: None,
                        cancelled: false,
                    };
                }
                last_problem = Some(format!("status {status}"));
            }
            Err(e) => last_problem = Some(e.to_string()),
        }
        let now = Instant::now();
        if now >= deadline || cancel.is_cancelled() {
            return Checked {
                ok: false,
                status,
                attempts,
                elapsed: start.elapsed(),
                last_problem,
                cancelled: cancel.is_cancelled(),
            };
        }
        // Sleep in short slices so that a cancel is seen promptly.
        let wake = (now + pause).min(deadline);
        while Instant::now() < wake {
            if cancel.is_cancelled() {
                return Checked {
                    ok: false,
                    status,
                    attempts,
                    elapsed: start.elapsed(),
                    last_problem,
                    cancelled: true,
                };
            }
            std::thread::sleep(
                wake.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(50)),
            );
        }
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// Serves the given statuses in order, one connection each, on a loopback port.
    fn server(statuses: Vec<u16>) -> (String, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api/v1/health", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            for status in statuses {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
            }
        });
        (url, handle)
    }

    #[test]
    fn retries_until_the_wanted_status() {
        let (url, h) = server(vec![503, 503, 200]);
        let c = check(
            &url,
            &Expect::Success,
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
            &Expect::Success,
            Duration::from_millis(300),
            Duration::from_millis(20),
            &Cancel::new(),
        );
        assert!(!c.ok);
        assert!(c.attempts >= 2, "{c:?}");
        assert_eq!(c.status, 0);
        assert!(c.last_problem.is_some());
    }

    #[test]
    fn explicit_expectation() {
        let (url, h) = server(vec![404]);
        let c = check(
            &url,
            &Expect::Any(vec![404]),
            Duration::from_secs(5),
            Duration::from_millis(10),
            &Cancel::new(),
        );
        h.join().unwrap();
        assert!(c.ok && c.status == 404);
    }
}
