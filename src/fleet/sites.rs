//! Owns the site map, the KV bucket that says which host serves each dedicated site: look-ups for producers
//! and bridges, and the compare-and-set changes operators make; it never publishes jobs.

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, kv};
use futures_util::TryStreamExt;

use super::names::{SITES_BUCKET, site_from_key, site_key};

async fn bucket(js: &jetstream::Context) -> Result<kv::Store> {
    js.get_key_value(SITES_BUCKET).await.with_context(|| {
        format!("cannot open the site map (bucket {SITES_BUCKET}): has `t8k-engine fleet init` run, and may this user read it?")
    })
}

/// The site map, to look sites up in it repeatedly.
pub async fn open(js: &jetstream::Context) -> Result<kv::Store> {
    bucket(js).await
}

/// The host serving `site`, if the map names one.
pub async fn lookup(js: &jetstream::Context, site: &str) -> Result<Option<String>> {
    lookup_in(&bucket(js).await?, site).await
}

/// The host serving `site` in an opened site map.
pub async fn lookup_in(store: &kv::Store, site: &str) -> Result<Option<String>> {
    let value = store
        .get(site_key(site))
        .await
        .with_context(|| format!("cannot read site `{site}` from the site map"))?;
    Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// Points `site` at `host` (which must be in the fleet); returns the host it was on before. The change is a
/// compare-and-set, so two operators moving one site at once cannot both win.
pub async fn set(js: &jetstream::Context, site: &str, host: &str) -> Result<Option<String>> {
    crate::trigger::validate_value("site", site).map_err(anyhow::Error::msg)?;
    super::config::check_name("host", host)?;
    if !super::setup::host_exists(js, host).await? {
        bail!(
            "host `{host}` is not in the fleet: add it with `t8k-engine fleet init --host {host}` (admin credentials) first"
        );
    }
    let store = bucket(js).await?;
    let key = site_key(site);
    let entry = store
        .entry(key.clone())
        .await
        .with_context(|| format!("cannot read site `{site}`"))?;
    let (before, written) = match entry {
        Some(e) if e.operation == kv::Operation::Put => {
            let before = String::from_utf8_lossy(&e.value).into_owned();
            let r = store
                .update(&key, host.to_string().into(), e.revision)
                .await;
            (Some(before), r.map(|_| ()).map_err(anyhow::Error::new))
        }
        Some(e) => {
            let r = store
                .update(&key, host.to_string().into(), e.revision)
                .await;
            (None, r.map(|_| ()).map_err(anyhow::Error::new))
        }
        None => {
            let r = store.create(&key, host.to_string().into()).await;
            (None, r.map(|_| ()).map_err(anyhow::Error::new))
        }
    };
    written.with_context(|| {
        format!("cannot set site `{site}`: it changed meanwhile (someone else moved it?); look with `t8k-engine fleet sites list` and try again")
    })?;
    Ok(before)
}

/// Takes `site` out of the map; returns the host it was on.
pub async fn remove(js: &jetstream::Context, site: &str) -> Result<Option<String>> {
    let before = lookup(js, site).await?;
    if before.is_some() {
        bucket(js)
            .await?
            .delete(site_key(site))
            .await
            .with_context(|| format!("cannot remove site `{site}`"))?;
    }
    Ok(before)
}

/// Every site with its host, sorted by site. Keys are listed from the bucket's stream information, so a
/// reader needs no consumer of its own.
pub async fn list(js: &jetstream::Context) -> Result<Vec<(String, String)>> {
    let store = bucket(js).await?;
    let prefix = format!("$KV.{SITES_BUCKET}.");
    let mut subjects = js
        .get_stream_no_info(format!("KV_{SITES_BUCKET}"))
        .await?
        .info_with_subjects(format!("{prefix}>"))
        .await
        .context("cannot list the site map")?;
    let mut sites = Vec::new();
    while let Some(subject) = subjects
        .try_next()
        .await
        .context("cannot list the site map")?
    {
        let Some(key) = subject.0.strip_prefix(&prefix) else {
            continue;
        };
        if let (Some(site), Some(host)) = (site_from_key(key), store.get(key).await?) {
            sites.push((site, String::from_utf8_lossy(&host).into_owned()));
        }
    }
    sites.sort();
    Ok(sites)
}
