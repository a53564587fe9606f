//! Owns the engine's `log/status.json`: the document kept in memory, changed when the engine says
//! something happened (a job or step started or ended, the queue or the set-aside triggers changed, the
//! engine stopped) and written atomically each time. It reads the inbox, but never the journal: the
//! engine seeds it once at its start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use super::{
    EngineDoc, EngineState, JobDoc, QueuedDoc, ReleaseDoc, RunningDoc, SHOWN, StatusDoc, TargetDoc,
    VERSION,
};
use crate::config::Config;
use crate::history::StepRecord;
use crate::layout::Layout;

/// A ready trigger's job lines, by the file state (inode, size, mtime) they were read at.
type Parsed = HashMap<String, ((u64, i64, i64), QueuedDoc)>;

/// What the writer knows besides the document: when the running job and its open steps started (for
/// the times so far), and the ready triggers already read.
struct Inner {
    doc: StatusDoc,
    started: Option<Instant>,
    open: Vec<(usize, Instant)>,
    parsed: Parsed,
    warned: bool,
}

/// Keeps `status.json` current: every change is written at once through a temporary file renamed over it
/// (readers see the old document or the new one, never a part), without fsync (it is rewritten when the
/// engine starts).
pub struct StatusFile {
    path: PathBuf,
    config: Config,
    inner: Mutex<Inner>,
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

impl StatusFile {
    /// A writer for `path`, starting from `engine` (idle) and `targets`; writes the document at once.
    pub fn start(path: &Path, config: &Config, engine: EngineDoc, targets: Vec<TargetDoc>) -> Self {
        let doc = StatusDoc {
            version: VERSION,
            generated_at: now(),
            engine,
            running: None,
            queue: Vec::new(),
            queue_total: 0,
            claimed: Vec::new(),
            set_aside: Vec::new(),
            set_aside_total: 0,
            targets,
            idle_because: None,
            warnings: Vec::new(),
        };
        let file = StatusFile {
            path: path.to_path_buf(),
            config: config.clone(),
            inner: Mutex::new(Inner {
                doc,
                started: None,
                open: Vec::new(),
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
        inner.doc.generated_at = now();
        let Inner {
            doc, started, open, ..
        } = inner;
        if let (Some(r), Some(t)) = (doc.running.as_mut(), *started) {
            r.elapsed_s = t.elapsed().as_secs();
            for (i, at) in open.iter() {
                if let Some(s) = r.steps.get_mut(*i) {
                    s.wall_ms = at.elapsed().as_millis() as u64;
                }
            }
            r.step = super::step_now(&r.steps);
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

    /// The engine stopped: no pid, no running job, and nothing runs the waiting triggers.
    pub fn stopped(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.started = None;
        inner.open.clear();
        let doc = &mut inner.doc;
        doc.engine = EngineDoc {
            state: EngineState::Stopped,
            pid: None,
            since: None,
        };
        doc.running = None;
        doc.idle_because = super::idle_because(false, false, doc.queue.first());
        self.write(&mut inner);
    }

    /// What needs the operator although nothing failed (written with the next change).
    pub fn set_warnings(&self, warnings: Vec<String>) {
        let mut inner = self.inner.lock().unwrap();
        if inner.doc.warnings != warnings {
            inner.doc.warnings = warnings;
            self.write(&mut inner);
        }
    }

    /// A job started: it runs, and it is its target's last job.
    pub fn job_started(&self, running: RunningDoc) {
        let mut inner = self.inner.lock().unwrap();
        inner.started = Some(Instant::now());
        inner.open.clear();
        let last = JobDoc {
            job_id: running.job_id.clone(),
            command: running.command.clone(),
            result: "running".into(),
            started_at: running.started_at.clone(),
            duration_ms: None,
            reason: None,
        };
        let doc = &mut inner.doc;
        target_mut(&mut doc.targets, &running.target).last_job = Some(last);
        doc.claimed.retain(|c| *c != running.trigger);
        doc.running = Some(running);
        doc.engine.state = EngineState::Running;
        doc.idle_because = None;
        self.write(&mut inner);
    }

    /// A step of the running job started.
    pub fn step_started(&self, name: &str, branch: &str) {
        let mut inner = self.inner.lock().unwrap();
        let Some(job_start) = inner.started else {
            return;
        };
        let Some(r) = inner.doc.running.as_mut() else {
            return;
        };
        r.steps.push(StepRecord::started(
            name,
            branch,
            job_start.elapsed().as_millis() as u64,
        ));
        let i = r.steps.len() - 1;
        inner.open.push((i, Instant::now()));
        self.write(&mut inner);
    }

    /// A step of the running job ended, with its figures.
    pub fn step_ended(&self, record: &StepRecord) {
        let mut inner = self.inner.lock().unwrap();
        let Some(r) = inner.doc.running.as_mut() else {
            return;
        };
        let open = r
            .steps
            .iter()
            .position(|s| s.ok.is_none() && s.name == record.name && s.branch == record.branch);
        super::close_step(&mut r.steps, record);
        if let Some(i) = open {
            inner.open.retain(|(j, _)| *j != i);
        }
        self.write(&mut inner);
    }

    /// The running job of `target` ended as `job` says: it is the target's last job (and last failure
    /// unless it succeeded), and every target of its install (`same_install`) is served by `live` now.
    pub fn job_finished(
        &self,
        target: &str,
        job: JobDoc,
        same_install: impl Fn(&str) -> bool,
        live: Option<ReleaseDoc>,
    ) {
        let mut inner = self.inner.lock().unwrap();
        inner.started = None;
        inner.open.clear();
        let doc = &mut inner.doc;
        doc.running = None;
        if doc.engine.state == EngineState::Running {
            doc.engine.state = EngineState::Idle;
        }
        for t in doc.targets.iter_mut().filter(|t| same_install(&t.target)) {
            t.live = live.clone();
        }
        let t = target_mut(&mut doc.targets, target);
        t.live = live;
        if job.failed() {
            t.last_failure = Some(job.clone());
        }
        t.last_job = Some(job);
        self.write(&mut inner);
    }

    /// Reads the queue again (the inbox in run order, its first [`SHOWN`] probed; the claimed triggers
    /// but `running`; the set-aside ones) and writes the document when it changed. A ready trigger is
    /// read again only when its inode, size or mtime changed.
    pub fn refresh(&self, layout: &Layout, running: Option<&str>) {
        let mut inner = self.inner.lock().unwrap();
        let names = super::inbox(layout);
        let total = names.len();
        let mut queue = Vec::new();
        for name in names.into_iter().take(SHOWN) {
            if let Some(q) = self.probe(&mut inner.parsed, &layout.state.join(&name), name) {
                queue.push(q);
            }
        }
        inner
            .parsed
            .retain(|n, _| queue.iter().any(|q| q.name == *n));
        let claimed: Vec<String> = super::claimed(layout)
            .into_iter()
            .filter(|c| Some(c.as_str()) != running)
            .collect();
        let (set_aside, set_aside_total) = super::set_aside(layout, SHOWN);
        let doc = &mut inner.doc;
        let idle = super::idle_because(
            doc.engine.state != EngineState::Stopped,
            doc.running.is_some(),
            queue.first(),
        );
        let changed = (&doc.queue, doc.queue_total, &doc.claimed, &doc.set_aside)
            != (&queue, total, &claimed, &set_aside)
            || doc.set_aside_total != set_aside_total
            || doc.idle_because != idle;
        if changed {
            doc.queue = queue;
            doc.queue_total = total;
            doc.claimed = claimed;
            doc.set_aside = set_aside;
            doc.set_aside_total = set_aside_total;
            doc.idle_because = idle;
            self.write(&mut inner);
        }
    }

    fn probe(&self, parsed: &mut Parsed, path: &Path, name: String) -> Option<QueuedDoc> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path).ok()?;
        let key = (
            meta.ino(),
            meta.size() as i64,
            meta.mtime_nsec() + meta.mtime(),
        );
        if let Some((k, q)) = parsed.get(&name)
            && *k == key
        {
            return Some(q.clone());
        }
        let q = super::queued(path, name.clone(), &self.config)?;
        // Only a ready trigger stays so while its file does not change; the others are looked at again.
        if q.ready {
            parsed.insert(name, (key, q.clone()));
        }
        Some(q)
    }
}

/// A target's entry, added in name order when the document had none.
fn target_mut<'a>(targets: &'a mut Vec<TargetDoc>, target: &str) -> &'a mut TargetDoc {
    let i = match targets.binary_search_by(|t| t.target.as_str().cmp(target)) {
        Ok(i) => i,
        Err(i) => {
            targets.insert(
                i,
                TargetDoc {
                    target: target.to_string(),
                    live: None,
                    last_job: None,
                    last_failure: None,
                },
            );
            i
        }
    };
    &mut targets[i]
}
