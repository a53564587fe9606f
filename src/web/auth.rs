//! Owns who may act: the named tokens of `[web]`, a presented token checked against every one of them in
//! constant time, and the extractor that turns a request into the name of whoever asked; a token is never
//! logged or stored, only its digest is compared.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::WebConfig;
use super::{ApiError, AppState};

/// The configured tokens as (name, SHA-256).
#[derive(Debug, Clone, Default)]
pub struct Tokens(Vec<(String, [u8; 32])>);

impl Tokens {
    /// The tokens of a checked `[web]` section.
    pub fn of(config: &WebConfig) -> Tokens {
        Tokens(
            config
                .tokens
                .iter()
                .filter_map(|t| {
                    let bytes: [u8; 32] = hex::decode(&t.sha256).ok()?.try_into().ok()?;
                    Some((t.name.clone(), bytes))
                })
                .collect(),
        )
    }

    /// Whether no token is configured: then nothing may act and the page is read-only.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name of the token `presented` is, if any. Every configured digest is compared, each in
    /// constant time, so the time taken tells nothing about which one nearly matched.
    pub fn who(&self, presented: &[u8]) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for (name, expected) in &self.0 {
            if bool::from(digest.ct_eq(expected)) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// Whoever made an action request, by the name of the token they sent.
#[derive(Debug, Clone)]
pub struct Caller(pub String);

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        if state.tokens.is_empty() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "actions are off: no token is configured ([web] tokens); this server is read-only",
            ));
        }
        let Some(header) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "this action needs a token: send `Authorization: Bearer TOKEN`",
            ));
        };
        let presented = header.as_bytes().strip_prefix(b"Bearer ").ok_or_else(|| {
            ApiError::unauthorized("the Authorization header must be `Bearer TOKEN`")
        })?;
        match state.tokens.who(presented) {
            Some(name) => Ok(Caller(name.to_string())),
            None => {
                tracing::warn!(
                    "refused an action from {}: wrong token",
                    parts
                        .extensions
                        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                        .map_or("?".into(), |c| c.0.to_string())
                );
                Err(ApiError::unauthorized("wrong token"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_right_token_names_its_holder_and_others_name_nobody() {
        let digest = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
        let config = WebConfig {
            tokens: vec![
                super::super::config::Token {
                    name: "ops".into(),
                    sha256: digest("s3cret-ops"),
                },
                super::super::config::Token {
                    name: "cms".into(),
                    sha256: digest("s3cret-cms"),
                },
            ],
            ..WebConfig::default()
        };
        let tokens = Tokens::of(&config);
        assert_eq!(tokens.who(b"s3cret-cms"), Some("cms"));
        assert_eq!(tokens.who(b"s3cret-ops"), Some("ops"));
        assert_eq!(tokens.who(b"s3cret-op"), None);
        assert_eq!(tokens.who(b""), None);
        assert!(Tokens::default().is_empty());
    }
}
