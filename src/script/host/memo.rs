//! Owns `remember()`: a value a script worked out, kept in the engine's memory under a key for the later
//! jobs of the same round (the jobs an engine runs back to back), so that each asks an outside system once
//! a round rather than once a job. A value is kept as JSON text, never as a Rhai value, since every job
//! (and every `parallel` branch) has an engine of its own. It never touches the disk: what is kept goes
//! when the engine's queue empties ([`Memo::clear`]) or the engine exits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, FnPtr, NativeCallContext};

use super::Res;
use super::ctx::JobCtx;
use super::options::{MAX_SECS, number};

/// The longest key: keys name what was looked up (and digests of what decides it), not data.
const MAX_KEY_BYTES: usize = 1024;
/// The largest value kept, as JSON: a version, a commit, a small map; not a file's content.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// What all kept values may take together; the oldest go first past it. A daemon whose queue never
/// empties must not grow without bound.
pub const MAX_TOTAL_BYTES: usize = 1024 * 1024;

/// What scripts remembered (`remember`), shared by every job of one engine; clones share it.
#[derive(Clone, Default)]
pub struct Memo {
    entries: Arc<Mutex<Entries>>,
}

#[derive(Default)]
struct Entries {
    by_key: HashMap<String, Kept>,
    bytes: usize,
}

/// One kept value: JSON text and when it was worked out.
struct Kept {
    json: String,
    at: Instant,
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        write!(
            f,
            "Memo({} value(s), {} bytes)",
            entries.by_key.len(),
            entries.bytes
        )
    }
}

impl Memo {
    /// An empty memo.
    pub fn new() -> Memo {
        Memo::default()
    }

    /// Forgets every value (the queue emptied: the round is over); returns how many there were.
    pub fn clear(&self) -> usize {
        let mut entries = self.lock();
        let n = entries.by_key.len();
        *entries = Entries::default();
        n
    }

    /// How many values are kept.
    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding it left a map that is still whole (every change is one insert or remove).
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The JSON kept under `key` if it is at most `max_age` old at `now`.
    fn fresh(&self, key: &str, max_age: Duration, now: Instant) -> Option<String> {
        let entries = self.lock();
        let kept = entries.by_key.get(key)?;
        (now.saturating_duration_since(kept.at) <= max_age).then(|| kept.json.clone())
    }

    /// Keeps `json` under `key` as worked out at `at`, replacing what was there; the oldest values go
    /// while all of them together would exceed [`MAX_TOTAL_BYTES`].
    fn keep(&self, key: &str, json: String, at: Instant) {
        let mut entries = self.lock();
        if let Some(old) = entries.by_key.remove(key) {
            entries.bytes -= old.json.len() + key.len();
        }
        let size = json.len() + key.len();
        while entries.bytes + size > MAX_TOTAL_BYTES {
            let Some(oldest) = entries
                .by_key
                .iter()
                .min_by_key(|(_, k)| k.at)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            let gone = entries.by_key.remove(&oldest).unwrap();
            entries.bytes -= gone.json.len() + oldest.len();
        }
        entries.bytes += size;
        entries.by_key.insert(key.to_string(), Kept { json, at });
    }
}

pub(super) fn register(engine: &mut Engine, ctx: &Arc<JobCtx>) {
    let c = ctx.clone();
    engine.register_fn(
        "remember",
        move |nctx: NativeCallContext, key: &str, max_age: i64, f: FnPtr| {
            remember(&c, &nctx, key, max_age as f64, &f)
        },
    );
    let c = ctx.clone();
    engine.register_fn(
        "remember",
        move |nctx: NativeCallContext, key: &str, max_age: f64, f: FnPtr| {
            remember(&c, &nctx, key, max_age, &f)
        },
    );
}

/// The value kept under `key` when it is at most `max_age` seconds old; otherwise `f`'s, which is kept
/// (replacing an older one) unless `f` throws. Either way the value comes back from its JSON, so a
/// remembered value and a fresh one look the same to the script.
fn remember(
    ctx: &JobCtx,
    nctx: &NativeCallContext,
    key: &str,
    max_age: f64,
    f: &FnPtr,
) -> Res<Dynamic> {
    ctx.refuse_in_check("remember")?;
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "remember(): the key must be 1 to {MAX_KEY_BYTES} bytes long, got {}",
            key.len()
        )
        .into());
    }
    if !(0.0..=MAX_SECS).contains(&max_age) {
        return Err(format!(
            "remember(): `{}` is not a number of seconds from 0 to {MAX_SECS} (how old a kept value may be)",
            number(max_age)
        )
        .into());
    }
    let memo = &ctx.settings.memo;
    if let Some(json) = memo.fresh(key, Duration::from_secs_f64(max_age), Instant::now()) {
        tracing::debug!("remember(): `{key}` is remembered");
        return from_json(key, &json);
    }
    let at = Instant::now();
    let value = f.call_within_context::<Dynamic>(nctx, ())?;
    let json = to_json(&value)
        .map(|v| v.to_string())
        .map_err(|what| format!("remember(): the value of `{key}` cannot be kept: {what}; return plain data (strings, numbers, true/false, (), arrays and maps of them)"))?;
    if json.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "remember(): the value of `{key}` is {} bytes as JSON, over the {} KiB a value may keep; remember less (a version, a digest)",
            json.len(),
            MAX_VALUE_BYTES / 1024
        )
        .into());
    }
    let back = from_json(key, &json)?;
    memo.keep(key, json, at);
    Ok(back)
}

fn from_json(key: &str, json: &str) -> Res<Dynamic> {
    serde_json::from_str::<Dynamic>(json).map_err(|e| {
        format!("remember(): the kept value of `{key}` does not read back: {e}").into()
    })
}

/// A plain value as JSON; anything else (a function pointer, a timestamp, a host type) is named. Rhai's
/// own serialisation would write those as their type's name, and a later job would read a string.
fn to_json(value: &Dynamic) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    if value.is_shared() {
        return to_json(&value.flatten_clone());
    }
    if value.is_unit() {
        return Ok(Value::Null);
    }
    if let Ok(b) = value.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Ok(i) = value.as_int() {
        return Ok(i.into());
    }
    if let Ok(x) = value.as_float() {
        return serde_json::Number::from_f64(x)
            .map(Value::Number)
            .ok_or_else(|| format!("it holds the number {x}, which JSON cannot write"));
    }
    if let Ok(c) = value.as_char() {
        return Ok(Value::String(c.to_string()));
    }
    if value.is_string() {
        return Ok(Value::String(
            value.clone().into_string().unwrap_or_default(),
        ));
    }
    if value.is_blob() {
        let blob = value.clone().into_blob().unwrap_or_default();
        return Ok(blob.into_iter().map(Value::from).collect());
    }
    if value.is_array() {
        let array = value.clone().into_array().unwrap_or_default();
        return array.iter().map(to_json).collect();
    }
    if let Some(map) = value.clone().try_cast::<rhai::Map>() {
        return map
            .iter()
            .map(|(k, v)| Ok((k.to_string(), to_json(v)?)))
            .collect::<Result<serde_json::Map<_, _>, String>>()
            .map(Value::Object);
    }
    Err(format!("it holds a {}", value.type_name()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::{Scripts, Settings, new_engine};

    /// A job's engine whose memo is `memo`; `dry` as when scripts are checked.
    fn job(memo: &Memo, dry: bool) -> Engine {
        let config = crate::config::Config::default();
        let settings = Settings {
            memo: memo.clone(),
            ..Settings::from_config(&config, &crate::layout::Layout::new(&config))
        };
        let ctx = JobCtx::new(settings, crate::cancel::Cancel::new(), secs(60), dry);
        new_engine(&Scripts::new(std::path::Path::new("/nonexistent")), &ctx)
    }

    fn eval(engine: &Engine, script: &str) -> Result<Dynamic, String> {
        engine.eval::<Dynamic>(script).map_err(|e| e.to_string())
    }

    #[test]
    fn a_later_job_gets_the_value_without_running_the_closure() {
        let memo = Memo::new();
        let first = eval(
            &job(&memo, false),
            r#"let calls = 0;
               let a = remember("latest", 300, || { calls += 1; #{ version: "2.0.1", at: 17 } });
               let b = remember("latest", 300, || { calls += 1; #{ version: "9.9.9", at: 18 } });
               [a.version, b.version, calls]"#,
        )
        .unwrap();
        assert_eq!(first.to_string(), r#"["2.0.1", "2.0.1", 1]"#);
        // Another job, another engine: the same value, as a map again.
        let second = eval(
            &job(&memo, false),
            r#"let v = remember("latest", 300, || throw "not called"); `${v.version} ${v.at + 1}`"#,
        )
        .unwrap();
        assert_eq!(second.to_string(), "2.0.1 18");
        // max_age 0 works it out afresh and keeps that.
        let fresh = eval(
            &job(&memo, false),
            r#"remember("latest", 0, || "2.0.2"); remember("latest", 300, || "not called")"#,
        )
        .unwrap();
        assert_eq!(fresh.to_string(), "2.0.2");
        memo.clear();
        let after = eval(&job(&memo, false), r#"remember("latest", 300, || "2.0.3")"#).unwrap();
        assert_eq!(
            after.to_string(),
            "2.0.3",
            "a cleared memo works it out again"
        );
    }

    #[test]
    fn a_closure_that_throws_keeps_nothing() {
        let memo = Memo::new();
        let engine = job(&memo, false);
        let err = eval(
            &engine,
            r#"remember("latest", 300, || throw "registry down")"#,
        )
        .unwrap_err();
        assert!(err.contains("registry down"), "{err}");
        assert!(memo.is_empty());
        let caught = eval(
            &engine,
            r#"let v = "none";
               try { remember("latest", 300, || throw "registry down"); } catch (e) { v = "caught"; }
               [v, remember("latest", 300, || "2.0.1")]"#,
        )
        .unwrap();
        assert_eq!(caught.to_string(), r#"["caught", "2.0.1"]"#);
        assert_eq!(memo.len(), 1);
    }

    #[test]
    fn what_cannot_be_kept_is_refused_with_the_reason() {
        let memo = Memo::new();
        let engine = job(&memo, false);
        for (script, says) in [
            (
                r#"remember("f", 300, || || 1)"#,
                "cannot be kept: it holds a Fn",
            ),
            (
                r#"remember("", 300, || 1)"#,
                "the key must be 1 to 1024 bytes",
            ),
            (
                r#"remember("k", -1, || 1)"#,
                "`-1` is not a number of seconds",
            ),
            (
                r#"remember("big", 300, || { let s = "x"; s.pad(70000, "x"); s })"#,
                "over the 64 KiB a value may keep",
            ),
        ] {
            let err = eval(&engine, script).unwrap_err();
            assert!(err.contains(says), "{script}: {err}");
        }
        assert!(memo.is_empty());
        let err = eval(&job(&memo, true), r#"remember("k", 300, || 1)"#).unwrap_err();
        assert!(err.contains("not allowed while checking scripts"), "{err}");
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_value_is_fresh_until_it_is_older_than_the_age_asked_for() {
        let memo = Memo::new();
        let t0 = Instant::now();
        memo.keep("k", "\"2.0.1\"".into(), t0);
        assert_eq!(memo.fresh("k", secs(300), t0).as_deref(), Some("\"2.0.1\""));
        assert_eq!(
            memo.fresh("k", secs(300), t0 + secs(300)).as_deref(),
            Some("\"2.0.1\"")
        );
        assert_eq!(memo.fresh("k", secs(300), t0 + secs(301)), None);
        // The age is the caller's: another caller may accept an older value, or none (0: work it out).
        assert!(memo.fresh("k", secs(600), t0 + secs(301)).is_some());
        assert_eq!(memo.fresh("k", secs(0), t0 + secs(1)), None);
        // A value worked out again replaces the old one, with its own time.
        memo.keep("k", "\"2.0.2\"".into(), t0 + secs(400));
        assert_eq!(
            memo.fresh("k", secs(300), t0 + secs(500)).as_deref(),
            Some("\"2.0.2\"")
        );
        assert_eq!(memo.len(), 1);
    }

    #[test]
    fn keys_are_apart_and_clear_forgets_them_all() {
        let memo = Memo::new();
        let shared = memo.clone();
        let t0 = Instant::now();
        memo.keep("latest npmrc=aaa", "1".into(), t0);
        memo.keep("latest npmrc=none", "2".into(), t0);
        assert_eq!(
            shared.fresh("latest npmrc=aaa", secs(1), t0).as_deref(),
            Some("1")
        );
        assert_eq!(
            shared.fresh("latest npmrc=none", secs(1), t0).as_deref(),
            Some("2")
        );
        assert_eq!(shared.fresh("latest", secs(1), t0), None);
        assert_eq!(shared.clear(), 2, "a clone is the same memo");
        assert!(memo.is_empty());
        assert_eq!(memo.fresh("latest npmrc=aaa", secs(1), t0), None);
        assert_eq!(memo.clear(), 0);
    }

    #[test]
    fn past_the_total_the_oldest_values_go() {
        let memo = Memo::new();
        let t0 = Instant::now();
        let big = "x".repeat(MAX_VALUE_BYTES);
        let n = MAX_TOTAL_BYTES / MAX_VALUE_BYTES;
        for i in 0..n + 2 {
            memo.keep(&format!("k{i}"), big.clone(), t0 + secs(i as u64));
        }
        let now = t0 + secs(n as u64 + 2);
        assert_eq!(memo.fresh("k0", secs(1000), now), None);
        assert_eq!(memo.fresh("k1", secs(1000), now), None);
        assert_eq!(memo.fresh("k2", secs(1000), now), None, "keys count too");
        assert!(
            memo.fresh(&format!("k{}", n + 1), secs(1000), now)
                .is_some()
        );
        assert!(memo.lock().bytes <= MAX_TOTAL_BYTES);
    }

    #[test]
    fn only_plain_data_is_kept() {
        let mut map = rhai::Map::new();
        map.insert("version".into(), "2.0.1".into());
        map.insert("at".into(), Dynamic::from_int(1_700_000_000));
        map.insert("ok".into(), true.into());
        map.insert("none".into(), Dynamic::UNIT);
        map.insert(
            "list".into(),
            vec![Dynamic::from_float(1.5), 'c'.into()].into(),
        );
        let json = to_json(&map.into()).unwrap().to_string();
        assert_eq!(
            json,
            r#"{"at":1700000000,"list":[1.5,"c"],"none":null,"ok":true,"version":"2.0.1"}"#
        );
        let back = from_json("k", &json).unwrap().cast::<rhai::Map>();
        assert_eq!(back["at"].as_int(), Ok(1_700_000_000));
        assert!(back["none"].is_unit());
        let f = Dynamic::from(FnPtr::new("f").unwrap());
        let err = to_json(&vec![f].into()).unwrap_err();
        assert!(err.contains("Fn"), "{err}");
        assert!(to_json(&Dynamic::from_float(f64::NAN)).is_err());
    }
}
