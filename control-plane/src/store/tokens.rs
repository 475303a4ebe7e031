//! Admin API tokens, by SHA-256 digest only. Tokens are not config: they have no versions and
//! are never streamed. Every replica reads them from here on each call, so a revocation
//! through one replica holds on all of them at once.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Result, Store, StoreError, now_ms};

/// A stored admin token (its digest only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// The token's name, recorded as the author of its writes.
    pub name: String,
    /// SHA-256 of the token, lowercase hex.
    pub sha256: String,
    /// What it may do (`admin`, `editor`, `viewer`).
    pub role: String,
    /// When it was made, unix ms.
    pub created_at: i64,
    /// When it last authenticated a call, unix ms (to within a minute).
    pub last_used_at: Option<i64>,
}

impl TokenRecord {
    /// A new token record made now.
    pub fn new(name: &str, sha256: String, role: &str) -> TokenRecord {
        TokenRecord {
            name: name.to_owned(),
            sha256,
            role: role.to_owned(),
            created_at: now_ms(),
            last_used_at: None,
        }
    }
}

/// What [`Store::remove_token`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenRemoval {
    /// The token is gone.
    Removed,
    /// No token has that name.
    NotFound,
    /// It is the last admin token: removing it would leave nobody able to make tokens.
    LastAdmin,
}

const COLUMNS: &str = "name, token_sha256, role, created_at, last_used_at";

fn decode(row: &AnyRow) -> Result<TokenRecord> {
    Ok(TokenRecord {
        name: row.try_get("name")?,
        sha256: row.try_get("token_sha256")?,
        role: row.try_get("role")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

impl Store {
    /// Every admin token, by name.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM admin_tokens ORDER BY name"))
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::classify)?;
        rows.iter().map(decode).collect()
    }

    /// The token with this digest, if any.
    pub async fn token_by_digest(&self, sha256: &str) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM admin_tokens WHERE token_sha256 = $1"
        ))
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::classify)?;
        row.as_ref().map(decode).transpose()
    }

    /// Stores a token, replacing the digest and role of one of the same name (the bootstrap
    /// token given again at startup).
    pub async fn put_token(&self, token: &TokenRecord) -> Result<()> {
        self.insert_token(
            token,
            "DO UPDATE SET token_sha256 = excluded.token_sha256, role = excluded.role",
        )
        .await
        .map(drop)
    }

    /// Stores a new token; `false` (and nothing written) when the name is taken.
    pub async fn create_token(&self, token: &TokenRecord) -> Result<bool> {
        Ok(self.insert_token(token, "DO NOTHING").await? == 1)
    }

    /// Inserts `token`; `on_conflict` says what a token of the same name becomes. Returns the
    /// rows written.
    async fn insert_token(&self, token: &TokenRecord, on_conflict: &str) -> Result<u64> {
        let result = sqlx::query(&format!(
            "INSERT INTO admin_tokens (name, token_sha256, role, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) {on_conflict}"
        ))
        .bind(&token.name)
        .bind(&token.sha256)
        .bind(&token.role)
        .bind(token.created_at)
        .execute(&self.pool)
        .await
        .map_err(StoreError::classify)?;
        Ok(result.rows_affected())
    }

    /// Revokes the token `name`, unless it is the last admin token.
    pub async fn remove_token(&self, name: &str) -> Result<TokenRemoval> {
        // One statement: the count and the delete see the same snapshot.
        let result = sqlx::query(
            "DELETE FROM admin_tokens WHERE name = $1 AND (role <> 'admin' OR \
             (SELECT COUNT(*) FROM admin_tokens WHERE role = 'admin') > 1)",
        )
        .bind(name)
        .execute(&self.pool)
        .await
        .map_err(StoreError::classify)?;
        if result.rows_affected() == 1 {
            return Ok(TokenRemoval::Removed);
        }
        let exists = sqlx::query("SELECT name FROM admin_tokens WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::classify)?;
        Ok(if exists.is_some() {
            TokenRemoval::LastAdmin
        } else {
            TokenRemoval::NotFound
        })
    }

    /// Records that `name` authenticated a call at `at` (unix ms).
    pub async fn touch_token(&self, name: &str, at: i64) -> Result<()> {
        sqlx::query("UPDATE admin_tokens SET last_used_at = $1 WHERE name = $2")
            .bind(at)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(StoreError::classify)?;
        Ok(())
    }
}
