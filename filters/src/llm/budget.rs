//! Money and limits: prices turn usage into cost; a key's token rate limit and budgets are
//! checked against what the [`SpendStore`] has counted.
//!
//! A request is refused once a limit is reached, not before: spend is known only when a
//! response ends, so the request that crosses a limit is served, and the next one is refused.

use std::time::{Duration, SystemTime};

use wildmatch::WildMatch;

use crate::auth::KeyEntry;
use crate::llm::observe::Usage;
use crate::state::{Period, SpendStore};

/// The configured prices, first match wins.
#[derive(Debug, Default)]
pub struct Prices {
    entries: Vec<(WildMatch, sluice_conf::Price)>,
}

impl Prices {
    pub fn new(prices: &[sluice_conf::Price]) -> Self {
        Prices {
            entries: prices
                .iter()
                .map(|p| (WildMatch::new(&p.model), p.clone()))
                .collect(),
        }
    }

    /// The cost of `usage`, in millionths of the price unit, at the price of `model` (else of
    /// `fallback`, the model the client asked for); zero when neither has a price.
    pub fn cost_micros(&self, model: &str, fallback: &str, usage: &Usage) -> u64 {
        let price = self
            .entries
            .iter()
            .find(|(pattern, _)| pattern.matches(model))
            .or_else(|| {
                self.entries
                    .iter()
                    .find(|(pattern, _)| pattern.matches(fallback))
            });
        let Some((_, price)) = price else {
            return 0;
        };
        // Prices are per million tokens, so tokens × price is the cost in micro-units.
        let cost = usage.input_tokens as f64 * price.input_per_mtok
            + usage.output_tokens as f64 * price.output_per_mtok
            + usage.cache_read_tokens as f64
                * price.cache_read_per_mtok.unwrap_or(price.input_per_mtok)
            + usage.cache_write_tokens as f64
                * price.cache_write_per_mtok.unwrap_or(price.input_per_mtok);
        cost.round() as u64
    }
}

/// A limit the key has reached.
#[derive(Debug)]
pub struct Over {
    pub message: String,
    /// Until the limit's period ends.
    pub retry_after: Duration,
}

/// The first limit (token rate or budget) `key` has reached, if any.
pub fn over(key: &KeyEntry, spend: &dyn SpendStore) -> Option<Over> {
    let now = SystemTime::now();
    let mut limits: Vec<(&str, Period, Limit)> = Vec::new();
    if let Some(tpm) = key.tokens_per_minute {
        limits.push(("tokens_per_minute", Period::Minute, Limit::Tokens(tpm)));
    }
    if let Some(budget) = &key.budget {
        let tokens = [
            ("tokens_per_day", Period::Day, budget.tokens_per_day),
            ("tokens_per_month", Period::Month, budget.tokens_per_month),
        ];
        for (name, period, limit) in tokens {
            if let Some(limit) = limit {
                limits.push((name, period, Limit::Tokens(limit)));
            }
        }
        let costs = [
            ("cost_per_day", Period::Day, budget.cost_per_day),
            ("cost_per_month", Period::Month, budget.cost_per_month),
        ];
        for (name, period, limit) in costs {
            if let Some(limit) = limit {
                limits.push((name, period, Limit::Cost(limit)));
            }
        }
    }
    limits.into_iter().find_map(|(name, period, limit)| {
        let spent = spend.spent(&key.name, period);
        let (used, allowed) = match limit {
            Limit::Tokens(limit) => (spent.tokens as f64, limit as f64),
            Limit::Cost(limit) => (spent.cost_micros as f64 / 1_000_000.0, limit),
        };
        (used >= allowed).then(|| {
            let resets = period.end(now);
            let kind = if name.starts_with("tokens") {
                "a rate limit"
            } else {
                "a budget"
            };
            Over {
                message: format!(
                    "key `{}` has reached its `{name}` ({kind}: {} used of {}); it resets at {}",
                    key.name,
                    display(used),
                    display(allowed),
                    humantime::format_rfc3339_seconds(resets)
                ),
                retry_after: resets.duration_since(now).unwrap_or_default(),
            }
        })
    })
}

enum Limit {
    Tokens(u64),
    Cost(f64),
}

fn display(n: f64) -> String {
    if n.fract() == 0.0 {
        format!("{n:.0}")
    } else {
        format!("{n:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_per_million_tokens() {
        let prices = Prices::new(&[sluice_conf::Price {
            model: "claude-*".into(),
            input_per_mtok: 3.0,
            output_per_mtok: 15.0,
            cache_read_per_mtok: Some(0.3),
            cache_write_per_mtok: None,
        }]);
        let usage = Usage {
            input_tokens: 1000,
            output_tokens: 100,
            cache_read_tokens: 10_000,
            cache_write_tokens: 0,
        };
        // 1000 × 3 + 100 × 15 + 10000 × 0.3 micro-units.
        assert_eq!(prices.cost_micros("claude-x", "claude-x", &usage), 7500);
        assert_eq!(prices.cost_micros("gpt-4.1", "claude-x", &usage), 7500);
        assert_eq!(prices.cost_micros("gpt-4.1", "gpt-4.1", &usage), 0);
    }
}
