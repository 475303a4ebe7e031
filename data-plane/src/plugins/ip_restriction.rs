//! `ip-restriction`: refuses clients by address before anything else checks them (access
//! phase). Blocks are parsed once per snapshot; a request tests its canonical address (an
//! IPv4-mapped IPv6 peer counts as IPv4) against each block.

use std::net::IpAddr;

use http::{StatusCode, request};
use serde_json::Value;

use super::{Access, Plugin, RequestCtx, reject};
use gateway_proto::plugins::ip_restriction::Config;
use gateway_proto::schema::parse_cidr;

/// A compiled `ip-restriction`.
#[derive(Debug)]
pub struct IpRestriction {
    priority: i32,
    /// (network, prefix length).
    blocks: Vec<(IpAddr, u8)>,
    /// True for a whitelist: a client in no block is refused. False for a blacklist.
    allow_listed_only: bool,
    message: String,
    rejected: StatusCode,
}

impl IpRestriction {
    /// Compiles a validated config.
    pub fn build(priority: i32, config: &Value) -> Result<IpRestriction, String> {
        let config: Config = serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
        let (entries, allow_listed_only) = match (&config.whitelist, &config.blacklist) {
            (Some(list), None) => (list, true),
            (None, Some(list)) => (list, false),
            _ => return Err("exactly one of whitelist and blacklist is required".into()),
        };
        let blocks = entries
            .iter()
            .map(|entry| parse_cidr(entry))
            .collect::<Result<Vec<_>, _>>()?;
        let rejected = StatusCode::from_u16(config.rejected_code)
            .map_err(|_| format!("rejected_code {} is not a status", config.rejected_code))?;
        Ok(IpRestriction {
            priority,
            blocks,
            allow_listed_only,
            message: config.message,
            rejected,
        })
    }

    /// Whether `client` may pass.
    pub fn allows(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        let listed = self
            .blocks
            .iter()
            .any(|&(network, len)| contains(network, len, client));
        listed == self.allow_listed_only
    }
}

/// Whether `addr` is in the block `network/len` (families never mix).
fn contains(network: IpAddr, len: u8, addr: IpAddr) -> bool {
    match (network, addr) {
        (IpAddr::V4(network), IpAddr::V4(addr)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(network) & mask == u32::from(addr) & mask
        }
        (IpAddr::V6(network), IpAddr::V6(addr)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(network) & mask == u128::from(addr) & mask
        }
        _ => false,
    }
}

impl Plugin for IpRestriction {
    fn name(&self) -> &'static str {
        "ip-restriction"
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn access(&self, ctx: &mut RequestCtx<'_>, _request: &mut request::Parts) -> Access {
        if self.allows(ctx.client.ip()) {
            Access::Continue
        } else {
            Access::Reject(reject(self.rejected, "ip_forbidden", &self.message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plugin(config: Value) -> IpRestriction {
        IpRestriction::build(3000, &config).unwrap()
    }

    #[test]
    fn whitelists_and_blacklists_over_both_families() {
        let allow = plugin(json!({"whitelist": ["10.0.0.0/8", "fd00::/8", "192.0.2.7"]}));
        for ok in ["10.1.2.3", "fd12::1", "192.0.2.7", "::ffff:10.9.9.9"] {
            assert!(allow.allows(ok.parse().unwrap()), "{ok}");
        }
        for refused in ["11.0.0.1", "fe80::1", "192.0.2.8", "::1"] {
            assert!(!allow.allows(refused.parse().unwrap()), "{refused}");
        }
        let deny = plugin(json!({"blacklist": ["127.0.0.1/32", "0.0.0.0/0"]}));
        assert!(!deny.allows("8.8.8.8".parse().unwrap()));
        assert!(
            deny.allows("::1".parse().unwrap()),
            "an IPv4 block never holds IPv6"
        );
        // A block written IPv4-mapped holds the IPv4 clients it names, however they arrive.
        let mapped = plugin(json!({"blacklist": ["::ffff:203.0.113.0/120"]}));
        for client in ["203.0.113.9", "::ffff:203.0.113.9"] {
            assert!(!mapped.allows(client.parse().unwrap()), "{client}");
        }
        assert!(mapped.allows("203.0.114.1".parse().unwrap()));
        assert!(IpRestriction::build(1, &json!({"whitelist": ["10.0.0.0/33"]})).is_err());
        assert!(
            IpRestriction::build(
                1,
                &json!({"whitelist": ["1.1.1.1"], "blacklist": ["2.2.2.2"]})
            )
            .is_err()
        );
    }
}
