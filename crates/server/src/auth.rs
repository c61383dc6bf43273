//! Client authentication: bearer tokens with scopes, from the config file.
//!
//! With no token configured every client may do everything (the default, for `dynamokv dev`).
//! Once any is configured, every request on the HTTP and RESP ports needs one: `read` for gets,
//! `write` for puts and deletes, `admin` for `/admin/*` and `/metrics` (admin grants read and
//! write too). Tokens are compared by their BLAKE3 hashes, in constant time, against every
//! configured token (no early exit), so timing tells nothing about which bytes matched.

use serde::{Deserialize, Serialize};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Gets (HTTP GET /kv, RESP GET, MGET, EXISTS, DKV.GET).
    Read,
    /// Puts and deletes.
    Write,
    /// The admin endpoints and metrics; implies read and write.
    Admin,
}

impl Scope {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

/// One token of the config file (`[[tokens]]`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs and for `AUTH name token`.
    pub name: String,
    /// The secret token clients send (`Authorization: Bearer ...`, `AUTH ...`), at least 16
    /// characters.
    pub token: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("token", &"<hidden>")
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// The configured tokens, hashed.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<(String, blake3::Hash, Vec<Scope>)>,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or one that is not configured.
    Unauthenticated,
    /// A valid token without the scope needed.
    Forbidden {
        /// The token's name.
        name: String,
        /// The scope needed.
        needed: Scope,
    },
}

impl Tokens {
    /// The tokens of the config (checked by [`validate`]).
    pub fn new(config: &[TokenConfig]) -> Self {
        Self {
            entries: config
                .iter()
                .map(|t| {
                    (
                        t.name.clone(),
                        blake3::hash(t.token.as_bytes()),
                        t.scopes.clone(),
                    )
                })
                .collect(),
        }
    }

    /// Whether any token is configured (authentication is on).
    pub fn enabled(&self) -> bool {
        !self.entries.is_empty()
    }

    /// The name and scopes of `presented`, if it is a configured token.
    pub fn find(&self, presented: &[u8]) -> Option<(&str, &[Scope])> {
        let h = blake3::hash(presented);
        let mut found = None;
        for (name, hash, scopes) in &self.entries {
            // blake3::Hash compares in constant time; every entry is compared.
            if *hash == h {
                found = Some((name.as_str(), scopes.as_slice()));
            }
        }
        found
    }

    /// Whether `presented` (None: no token) may do what needs `needed`.
    pub fn check(&self, presented: Option<&[u8]>, needed: Scope) -> Result<(), Refusal> {
        if !self.enabled() {
            return Ok(());
        }
        let (name, scopes) = presented
            .and_then(|p| self.find(p))
            .ok_or(Refusal::Unauthenticated)?;
        if allows(scopes, needed) {
            Ok(())
        } else {
            Err(Refusal::Forbidden {
                name: name.to_owned(),
                needed,
            })
        }
    }
}

/// Whether `scopes` grant `needed` (admin grants everything).
pub fn allows(scopes: &[Scope], needed: Scope) -> bool {
    scopes.contains(&needed) || scopes.contains(&Scope::Admin)
}

/// A configured token that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Its secret is too short to resist guessing.
    #[error("token {0:?} is shorter than 16 characters; use a long random token")]
    TooShort(String),
    /// It grants nothing.
    #[error("token {0:?} has no scopes; give it some of read, write, admin")]
    NoScopes(String),
    /// Its name or its secret is configured twice.
    #[error("token {0:?} is configured twice")]
    Twice(String),
}

/// Checks the configured tokens: names unique, tokens at least 16 characters and unique, at
/// least one scope each.
pub fn validate(tokens: &[TokenConfig]) -> Result<(), TokenError> {
    let mut names = std::collections::BTreeSet::new();
    let mut secrets = std::collections::BTreeSet::new();
    for t in tokens {
        if t.token.len() < 16 {
            return Err(TokenError::TooShort(t.name.clone()));
        }
        if t.scopes.is_empty() {
            return Err(TokenError::NoScopes(t.name.clone()));
        }
        if !names.insert(&t.name) || !secrets.insert(&t.token) {
            return Err(TokenError::Twice(t.name.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(&[
            TokenConfig {
                name: "reader".into(),
                token: "r".repeat(20),
                scopes: vec![Scope::Read],
            },
            TokenConfig {
                name: "ops".into(),
                token: "a".repeat(20),
                scopes: vec![Scope::Admin],
            },
        ])
    }

    #[test]
    fn scopes_are_enforced_and_no_token_means_open() {
        let t = tokens();
        let reader = "r".repeat(20);
        let admin = "a".repeat(20);
        assert_eq!(t.check(Some(reader.as_bytes()), Scope::Read), Ok(()));
        assert_eq!(
            t.check(Some(reader.as_bytes()), Scope::Write),
            Err(Refusal::Forbidden {
                name: "reader".into(),
                needed: Scope::Write
            })
        );
        assert_eq!(t.check(Some(admin.as_bytes()), Scope::Write), Ok(()));
        assert_eq!(
            t.check(Some(b"wrong-token-0000000"), Scope::Read),
            Err(Refusal::Unauthenticated)
        );
        assert_eq!(t.check(None, Scope::Read), Err(Refusal::Unauthenticated));
        assert_eq!(Tokens::default().check(None, Scope::Admin), Ok(()));
    }

    #[test]
    fn weak_or_duplicate_tokens_are_refused() {
        let t = |name: &str, token: &str| TokenConfig {
            name: name.into(),
            token: token.into(),
            scopes: vec![Scope::Read],
        };
        assert_eq!(
            validate(&[t("a", "short")]),
            Err(TokenError::TooShort("a".into()))
        );
        assert_eq!(
            validate(&[t("a", &"x".repeat(16)), t("a", &"y".repeat(16))]),
            Err(TokenError::Twice("a".into()))
        );
        assert_eq!(
            validate(&[t("a", &"x".repeat(16)), t("b", &"x".repeat(16))]),
            Err(TokenError::Twice("b".into()))
        );
        assert!(validate(&[t("a", &"x".repeat(16)), t("b", &"y".repeat(16))]).is_ok());
    }
}
