//! Owns the read-only `job` object scripts receive: the validated trigger line plus the resolved target;
//! scripts can read it but never change it.

use rhai::{CustomType, Dynamic, TypeBuilder};

use crate::layout::Target;
use crate::trigger::JobSpec;

/// A job as scripts see it.
#[derive(Debug, Clone)]
pub struct Job {
    /// Unique id of this run of the job (a ULID).
    pub id: String,
    /// The validated trigger line.
    pub spec: JobSpec,
    /// The trigger file's name (empty for `eval`).
    pub trigger: String,
    /// The TractStack root.
    pub root: String,
    /// Where the job's install lives.
    pub target: Target,
}

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

fn port(p: Option<u16>) -> Dynamic {
    p.map_or(Dynamic::UNIT, |p| Dynamic::from_int(p.into()))
}

impl CustomType for Job {
    fn build(mut b: TypeBuilder<Self>) {
        b.with_name("Job")
            .with_get("id", |j: &mut Job| j.id.clone())
            .with_get("type", |j: &mut Job| j.spec.kind.as_str().to_string())
            .with_get("tenant", |j: &mut Job| j.spec.tenant.clone())
            .with_get("site", |j: &mut Job| {
                j.spec.site.clone().unwrap_or_default()
            })
            .with_get("command", |j: &mut Job| j.spec.command.clone())
            .with_get("force", |j: &mut Job| j.spec.force)
            .with_get("trigger", |j: &mut Job| j.trigger.clone())
            .with_get("line", |j: &mut Job| j.spec.line as i64)
            .with_get("target", |j: &mut Job| j.spec.target_name())
            .with_get("root", |j: &mut Job| j.root.clone())
            .with_get("base", |j: &mut Job| path(&j.target.base))
            .with_get("backend_src", |j: &mut Job| path(&j.target.backend_src))
            .with_get("frontend_src", |j: &mut Job| path(&j.target.frontend_src))
            .with_get("binary", |j: &mut Job| path(&j.target.binary))
            .with_get("data_dir", |j: &mut Job| path(&j.target.data_dir))
            .with_get("data_dir_from", |j: &mut Job| {
                j.target.data_dir_from.clone()
            })
            .with_get("whitelist", |j: &mut Job| path(&j.target.whitelist))
            .with_get("unit", |j: &mut Job| j.target.unit.clone())
            .with_get("pm2_name", |j: &mut Job| j.target.pm2_name.clone())
            .with_get("go_port", |j: &mut Job| port(j.target.go_port))
            .with_get("astro_port", |j: &mut Job| port(j.target.astro_port))
            .with_fn("to_string", |j: &mut Job| j.describe())
            .with_fn("to_debug", |j: &mut Job| j.describe());
    }
}

impl Job {
    /// The install the job's target lives in (`main` for main and multi targets, `dedicated/SITE`).
    pub fn install(&self) -> String {
        crate::release::install_of(&self.spec)
    }

    /// One line for logs and `print(job)`.
    pub fn describe(&self) -> String {
        format!(
            "job {} ({} {}, {}:{})",
            self.id,
            self.spec.target_name(),
            self.spec.command,
            self.trigger,
            self.spec.line
        )
    }
}

/// The getters above, for `t8k-engine api`: (name, description).
pub const FIELDS: &[(&str, &str)] = &[
    ("id", "unique id of this run of the job"),
    (
        "type",
        "main, multi or dedicated (prod is reported as main)",
    ),
    ("tenant", "tenant name (default)"),
    ("site", "dedicated site id, empty string otherwise"),
    ("command", "the command (script function) being run"),
    (
        "force",
        "true when the trigger asked for a full build (force=true)",
    ),
    ("trigger", "trigger file name"),
    ("line", "line number in the trigger file"),
    (
        "target",
        "short target name: main, multi/TENANT or dedicated/SITE",
    ),
    ("root", "TractStack root"),
    ("base", "install directory: root, or root/sites/SITE"),
    (
        "backend_src",
        "Go backend repository (base/src/tractstack-go)",
    ),
    (
        "frontend_src",
        "Astro frontend repository (base/src/my-tractstack)",
    ),
    ("binary", "live backend binary (base/bin/tractstack-go)"),
    (
        "data_dir",
        "backend data directory, where it reads config/TENANT/: GO_BACKEND_PATH in backend_src/.env, else root/t8k-go-server ($HOME's)",
    ),
    ("data_dir_from", "where data_dir came from, for logs"),
    (
        "whitelist",
        "tenant's Tailwind whitelist (data_dir/config/TENANT/tailwindWhitelist.json)",
    ),
    ("unit", "systemd unit: tractstack-go or tractstack-go@SITE"),
    ("pm2_name", "pm2 process: astro-main or astro-SITE"),
    (
        "go_port",
        "backend port from etc/t8k-ports.conf, () when not listed",
    ),
    (
        "astro_port",
        "frontend port from etc/t8k-ports.conf, () when not listed",
    ),
];
