//! Owns `log/status.json` (`status_file`), the engine's state as a stable document for the CMS and the web
//! page (format [`VERSION`], schema in the README): the engine's state, the running job and step, the
//! queue, each target's live release and last failure; and its writer, which keeps the document in memory,
//! changes it when the engine says something happened and writes it atomically. It decides nothing and
//! reads the journal only when asked to seed the targets.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::history::{JobResult, JobView};
use crate::layout::Layout;
use crate::release::{self, Release, Store};
use crate::trigger;

/// The document's format. A reader should refuse a larger one; fields may be added within a version.
pub const VERSION: u32 = 1;
/// How many waiting triggers the document lists (`queue_total` counts them all).
pub const QUEUE_SHOWN: usize = 100;

/// `status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusDoc {
    /// [`VERSION`].
    pub version: u32,
    /// The engine process.
    pub engine: EngineDoc,
    /// The job running now.
    pub running: Option<RunningDoc>,
    /// Triggers waiting, in the order they will run (the first [`QUEUE_SHOWN`]).
    pub queue: Vec<QueuedDoc>,
    /// How many triggers wait in all.
    pub queue_total: usize,
    /// Every target the engine knows, by name (`main`, `multi/TENANT`, `dedicated/SITE`).
    pub targets: BTreeMap<String, TargetDoc>,
    /// When the document was written (RFC 3339).
    pub updated_at: String,
}

/// What the engine is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineState {
    /// Running a job.
    Running,
    /// Up and waiting for triggers.
    Idle,
    /// Asked to stop, finishing the running step.
    Stopping,
    /// No engine runs (with the path unit, the next trigger starts one).
    Stopped,
}

/// The engine process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineDoc {
    /// What it does.
    pub state: EngineState,
    /// Its pid (while it runs).
    pub pid: Option<u32>,
    /// When it started (RFC 3339).
    pub since: Option<String>,
}

/// The running job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningDoc {
    /// Its id (`t8k-engine logs ID`).
    pub job: String,
    /// `FILE:LINE` of its trigger.
    pub trigger: String,
    /// Its target.
    pub target: String,
    /// The script function it runs (`build`, `rollback`).
    pub command: String,
    /// The step it is in (the latest started of those still running), if any.
    pub step: Option<String>,
    /// That step's `parallel` branch, empty on the main line.
    pub branch: Option<String>,
    /// When that step started (RFC 3339).
    pub step_started: Option<String>,
    /// When the job started (RFC 3339).
    pub started: String,
    /// Seconds the job had run at `updated_at`.
    pub elapsed: u64,
}

/// A waiting trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedDoc {
    /// Its file name.
    pub name: String,
    /// Its job lines when it parses (empty while it is being written, or when it will be set aside).
    pub jobs: Vec<String>,
}

/// One target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetDoc {
    /// The release that serves it.
    pub live_release: Option<ReleaseDoc>,
    /// Its last job that did not succeed.
    pub last_failure: Option<FailureDoc>,
}

/// A live release, in short.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseDoc {
    /// Its number within the install (`t8k-engine releases`).
    pub id: u64,
    /// The target whose job built it (main and multi targets share one install).
    pub target: String,
    /// Backend commit.
    pub backend: Option<String>,
    /// Frontend commit.
    pub frontend: Option<String>,
    /// When it was recorded (RFC 3339).
    pub released_at: String,
    /// The job that built it.
    pub job: String,
}

impl ReleaseDoc {
    /// The short form of a release record.
    pub fn of(r: &Release) -> ReleaseDoc {
        ReleaseDoc {
            id: r.id,
            target: r.target.clone(),
            backend: r.fact("backend").map(str::to_string),
            frontend: r.fact("frontend").map(str::to_string),
            released_at: r.released_at.clone(),
            job: r.job_id.clone(),
        }
    }
}

/// A job that did not succeed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureDoc {
    /// Its id.
    pub job: String,
    /// When it started (RFC 3339).
    pub at: String,
    /// `failed`, `rolled_back`, `cancelled` or `interrupted`.
    pub result: String,
    /// Why, in one line.
    pub reason: String,
}

impl FailureDoc {
    /// The failure of a job that did not succeed; `None` for one that did, runs, or ran again.
    pub fn of(job: &JobView) -> Option<FailureDoc> {
        if matches!(
            job.result,
            JobResult::Succeeded | JobResult::Running | JobResult::InterruptedRerun
        ) {
            return None;
        }
        Some(FailureDoc {
            job: job.job_id.clone(),
            at: job.started_at.clone(),
            result: job.result.to_string(),
            reason: job.reason.clone().unwrap_or_else(|| job.result.to_string()),
        })
    }
}

/// One target's live release (the install's) and last failure, as `status` and this document show them.
pub struct TargetState {
    /// `main`, `multi/TENANT` or `dedicated/SITE`.
    pub target: String,
    /// The release serving the target's install.
    pub live: Option<Release>,
    /// Its last job that did not succeed.
    pub last_failure: Option<FailureDoc>,
}

/// Every target the engine knows (the layout's, those with jobs, those with releases), sorted, each with
/// its install's live release and its last failure; `jobs` newest first.
pub fn target_states(layout: &Layout, jobs: &[JobView]) -> Vec<TargetState> {
    let mut names: Vec<String> = vec!["main".to_string()];
    let dir_names = |dir: PathBuf| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    };
    // config/t8k is the backend's tenant registry, no tenant.
    names.extend(
        dir_names(layout.root.join("t8k-go-server").join("config"))
            .into_iter()
            .filter(|t| t != "t8k")
            .map(|t| format!("multi/{t}")),
    );
    names.extend(
        dir_names(layout.root.join("sites"))
            .into_iter()
            .map(|s| format!("dedicated/{s}")),
    );
    names.extend(jobs.iter().map(|j| j.target.clone()));
    let mut stores: HashMap<String, Option<Store>> = HashMap::new();
    for install in release::installs(&layout.releases_dir) {
        let store = Store::load(&layout.releases_dir, &install).ok();
        if let Some(s) = &store {
            names.extend(s.releases.iter().map(|r| r.target.clone()));
        }
        stores.insert(install, store);
    }
    names.retain(|n| release::install_of_target(n).is_some());
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|target| {
            let install = release::install_of_target(&target).unwrap_or_default();
            let live = stores
                .get(&install)
                .and_then(|s| s.as_ref())
                .and_then(|s| s.live().cloned());
            let last_failure = jobs
                .iter()
                .filter(|j| j.target == target)
                .find_map(FailureDoc::of);
            TargetState {
                target,
                live,
                last_failure,
            }
        })
        .collect()
}

/// The document's targets from their states.
pub fn targets_doc(states: &[TargetState]) -> BTreeMap<String, TargetDoc> {
    states
        .iter()
        .map(|s| {
            (
                s.target.clone(),
                TargetDoc {
                    live_release: s.live.as_ref().map(ReleaseDoc::of),
                    last_failure: s.last_failure.clone(),
                },
            )
        })
        .collect()
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// The job lines of a queued trigger, by the file state (inode, size, mtime) they were read at.
type Parsed = HashMap<String, ((u64, i64, i64), Vec<String>)>;

/// What the writer knows besides the document: when the running job started (for `elapsed`), the steps
/// running now, and the parsed queue by file state.
struct Inner {
    doc: StatusDoc,
    started: Option<Instant>,
    steps: Vec<(String, String, String)>,
    parsed: Parsed,
    warned: bool,
}

/// Keeps `status.json` current: every change is written at once through a temporary file renamed over it
/// (readers see the old document or the new one, never a part), without fsync (it is rewritten when the
/// engine starts).
pub struct StatusFile {
    path: PathBuf,
    max_trigger_bytes: u64,
    inner: Mutex<Inner>,
}

impl StatusFile {
    /// A writer for `path`, starting from `targets`; writes the document of an idle engine at once.
    pub fn start(
        path: &Path,
        max_trigger_bytes: u64,
        targets: BTreeMap<String, TargetDoc>,
    ) -> Self {
        let doc = StatusDoc {
            version: VERSION,
            engine: EngineDoc {
                state: EngineState::Idle,
                pid: Some(std::process::id()),
                since: Some(now()),
            },
            running: None,
            queue: Vec::new(),
            queue_total: 0,
            targets,
            updated_at: now(),
        };
        let file = StatusFile {
            path: path.to_path_buf(),
            max_trigger_bytes,
            inner: Mutex::new(Inner {
                doc,
                started: None,
                steps: Vec::new(),
                parsed: HashMap::new(),
                warned: false,
            }),
        };
        file.update(|_| {});
        file
    }

    /// The document as it was last written.
    pub fn doc(&self) -> StatusDoc {
        self.inner.lock().unwrap().doc.clone()
    }

    /// Changes the document and writes it.
    pub fn update(&self, change: impl FnOnce(&mut StatusDoc)) {
        let mut inner = self.inner.lock().unwrap();
        change(&mut inner.doc);
        self.write(&mut inner);
    }

    fn write(&self, inner: &mut Inner) {
        inner.doc.updated_at = now();
        if let (Some(r), Some(t)) = (inner.doc.running.as_mut(), inner.started) {
            r.elapsed = t.elapsed().as_secs();
        }
        let written = serde_json::to_vec_pretty(&inner.doc)
            .map_err(anyhow::Error::from)
            .and_then(|mut text| {
                text.push(b'\n');
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                crate::fs::write_atomically(&self.path, &text)
            });
        match written {
            Ok(()) => inner.warned = false,
            Err(e) if !inner.warned => {
                inner.warned = true;
                tracing::warn!(
                    "cannot write the status document {}: {e:#}; the engine goes on without it",
                    self.path.display()
                );
            }
            Err(_) => {}
        }
    }

    /// The engine's state.
    pub fn engine_state(&self, state: EngineState) {
        self.update(|d| {
            d.engine.state = state;
            if state == EngineState::Stopped {
                d.engine.pid = None;
                d.running = None;
            }
        });
    }

    /// A job started.
    pub fn job_started(&self, running: RunningDoc) {
        let mut inner = self.inner.lock().unwrap();
        inner.started = Some(Instant::now());
        inner.steps.clear();
        inner.doc.running = Some(running);
        if inner.doc.engine.state != EngineState::Stopping {
            inner.doc.engine.state = EngineState::Running;
        }
        self.write(&mut inner);
    }

    /// A step of the running job started (`ended` false) or ended.
    pub fn step(&self, name: &str, branch: &str, ended: bool) {
        let mut inner = self.inner.lock().unwrap();
        if ended {
            if let Some(i) = inner
                .steps
                .iter()
                .rposition(|(n, b, _)| n == name && b == branch)
            {
                inner.steps.remove(i);
            }
        } else {
            inner
                .steps
                .push((name.to_string(), branch.to_string(), now()));
        }
        let current = inner.steps.last().cloned();
        if let Some(r) = inner.doc.running.as_mut() {
            r.step = current.as_ref().map(|(n, _, _)| n.clone());
            r.branch = current.as_ref().map(|(_, b, _)| b.clone());
            r.step_started = current.map(|(_, _, at)| at);
        }
        self.write(&mut inner);
    }

    /// The running job of `target` ended: every target of its install (`same_install`) is served by
    /// `live` now, and `failure` is the target's last failure unless the job succeeded (`None`). A target
    /// the document did not list is added only when there is something to say of it.
    pub fn job_finished(
        &self,
        target: &str,
        same_install: impl Fn(&str) -> bool,
        live: Option<ReleaseDoc>,
        failure: Option<FailureDoc>,
    ) {
        let mut inner = self.inner.lock().unwrap();
        inner.started = None;
        inner.steps.clear();
        inner.doc.running = None;
        if inner.doc.engine.state == EngineState::Running {
            inner.doc.engine.state = EngineState::Idle;
        }
        for (name, t) in inner.doc.targets.iter_mut() {
            if same_install(name) {
                t.live_release = live.clone();
            }
        }
        match inner.doc.targets.get_mut(target) {
            Some(t) if failure.is_some() => t.last_failure = failure,
            Some(_) => {}
            None if live.is_some() || failure.is_some() => {
                inner.doc.targets.insert(
                    target.to_string(),
                    TargetDoc {
                        live_release: live,
                        last_failure: failure,
                    },
                );
            }
            None => {}
        }
        self.write(&mut inner);
    }

    /// Reads the queue again (claimed triggers not running, then the inbox, in name order) and writes
    /// the document when it changed. Only the listed files are read, each again only when its inode,
    /// size or mtime changed.
    pub fn refresh_queue(&self, layout: &Layout, running: Option<&str>) {
        let mut inner = self.inner.lock().unwrap();
        let names: Vec<(&PathBuf, String)> = [&layout.work, &layout.state]
            .into_iter()
            .flat_map(|dir| trigger_names(dir).into_iter().map(move |n| (dir, n)))
            .filter(|(_, n)| Some(n.as_str()) != running)
            .collect();
        let total = names.len();
        let mut queue = Vec::new();
        for (dir, name) in names.into_iter().take(QUEUE_SHOWN) {
            let jobs = self.jobs_of(&mut inner.parsed, &dir.join(&name), &name);
            queue.push(QueuedDoc { name, jobs });
        }
        inner
            .parsed
            .retain(|n, _| queue.iter().any(|q| q.name == *n));
        if inner.doc.queue != queue || inner.doc.queue_total != total {
            inner.doc.queue = queue;
            inner.doc.queue_total = total;
            self.write(&mut inner);
        }
    }

    fn jobs_of(&self, parsed: &mut Parsed, path: &Path, name: &str) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return Vec::new();
        };
        let key = (
            meta.ino(),
            meta.size() as i64,
            meta.mtime_nsec() + meta.mtime(),
        );
        if let Some((k, jobs)) = parsed.get(name)
            && *k == key
        {
            return jobs.clone();
        }
        let jobs: Vec<String> = crate::queue::open_trigger(path, self.max_trigger_bytes)
            .and_then(|f| crate::queue::read_capped(f, self.max_trigger_bytes))
            .ok()
            .and_then(|bytes| trigger::parse(&bytes).ok())
            .map(|specs| specs.iter().map(|s| s.to_line()).collect())
            .unwrap_or_default();
        parsed.insert(name.to_string(), (key, jobs.clone()));
        jobs
    }
}

fn trigger_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| trigger::is_trigger_name(n))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_follows_a_job_through_its_steps_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config {
            root: dir.path().to_path_buf(),
            ..crate::config::Config::default()
        };
        let layout = Layout::new(&config);
        std::fs::create_dir_all(&layout.state).unwrap();
        std::fs::write(
            layout.state.join("build-2.csv"),
            "type=main,command=build\n",
        )
        .unwrap();
        let path = dir.path().join("log/status.json");
        let file = StatusFile::start(&path, 4096, BTreeMap::new());
        let read =
            || -> StatusDoc { serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap() };
        assert_eq!(read().engine.state, EngineState::Idle);
        file.refresh_queue(&layout, None);
        assert_eq!(
            read().queue[0].jobs,
            ["type=main,tenant=default,command=build"]
        );
        file.job_started(RunningDoc {
            job: "J1".into(),
            trigger: "build-1.csv:1".into(),
            target: "main".into(),
            command: "build".into(),
            step: None,
            branch: None,
            step_started: None,
            started: now(),
            elapsed: 0,
        });
        file.step("build", "", false);
        file.step("build backend", "backend", false);
        file.step("build frontend", "frontend", false);
        file.step("build frontend", "frontend", true);
        let doc = read();
        assert_eq!(doc.engine.state, EngineState::Running);
        let running = doc.running.unwrap();
        assert_eq!(
            (running.step.as_deref(), running.branch.as_deref()),
            (Some("build backend"), Some("backend"))
        );
        let failure = FailureDoc {
            job: "J1".into(),
            at: now(),
            result: "failed".into(),
            reason: "it broke".into(),
        };
        file.job_finished("main", |t| t == "main", None, Some(failure));
        let doc = read();
        assert!(doc.running.is_none() && doc.targets.contains_key("main"));
        assert_eq!(doc, file.doc());
        file.engine_state(EngineState::Stopped);
        assert_eq!(read().engine.pid, None);
    }
}
