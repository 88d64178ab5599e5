//! Choosing providers for a request: the first route whose models, keys and headers match,
//! then its targets in the order to try them, skipping targets that keep failing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderMap;
use wildmatch::WildMatch;

/// One target of a route: a provider (by index into the provider list) and the model to ask
/// it for (`None`: the requested one).
#[derive(Debug, Clone)]
pub struct Target {
    pub provider: usize,
    pub model: Option<String>,
    pub weight: Option<u32>,
}

/// A route compiled from configuration.
#[derive(Debug)]
pub struct Route {
    models: Vec<WildMatch>,
    /// The patterns as written, for `/v1/models`.
    pub model_names: Vec<String>,
    keys: Vec<String>,
    headers: Vec<(String, String)>,
    pub targets: Vec<Target>,
    pub max_attempts: usize,
}

impl Route {
    pub fn new(route: &sluice_conf::Route, provider_index: impl Fn(&str) -> usize) -> Self {
        Route {
            models: route.models.iter().map(|m| WildMatch::new(m)).collect(),
            model_names: route.models.clone(),
            keys: route.keys.clone(),
            headers: route
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            targets: route
                .targets
                .iter()
                .map(|t| Target {
                    provider: provider_index(&t.provider),
                    model: t.model.clone(),
                    weight: t.weight,
                })
                .collect(),
            max_attempts: route.max_attempts,
        }
    }

    fn matches(&self, model: &str, key: &str, headers: &HeaderMap) -> bool {
        self.models.iter().any(|m| m.matches(model))
            && (self.keys.is_empty() || self.keys.iter().any(|k| k == key))
            && self.headers.iter().all(|(name, value)| {
                headers
                    .get(name.as_str())
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v == value)
            })
    }
}

/// The first route that takes `model` for `key` with these `headers`.
pub fn find<'a>(
    routes: &'a [Route],
    model: &str,
    key: &str,
    headers: &HeaderMap,
) -> Option<&'a Route> {
    routes.iter().find(|r| r.matches(model, key, headers))
}

/// Consecutive failures of targets (by provider and model), and the cool-downs they earned.
/// Kept across reloads: a provider that is down stays skipped.
#[derive(Debug, Default)]
pub struct Health {
    targets: Mutex<HashMap<(String, String), TargetHealth>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct TargetHealth {
    failures: u32,
    cooling_until: Option<Instant>,
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), TargetHealth>> {
        self.targets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether no target has a failure on record (the usual case: nothing to look up).
    fn all_well(&self) -> bool {
        self.lock().is_empty()
    }

    fn cooling(&self, provider: &str, model: &str, now: Instant) -> bool {
        self.lock()
            .get(&(provider.to_string(), model.to_string()))
            .and_then(|h| h.cooling_until)
            .is_some_and(|until| now < until)
    }

    /// A target answered well: its failures are forgotten.
    pub fn succeeded(&self, provider: &str, model: &str) {
        let mut targets = self.lock();
        if !targets.is_empty() {
            targets.remove(&(provider.to_string(), model.to_string()));
        }
    }

    /// A target failed; after `threshold` failures in a row it cools down for `cooldown`.
    /// Returns whether it started cooling down now.
    pub fn failed(&self, provider: &str, model: &str, threshold: u32, cooldown: Duration) -> bool {
        let mut targets = self.lock();
        let h = targets
            .entry((provider.to_string(), model.to_string()))
            .or_default();
        h.failures += 1;
        if h.failures >= threshold.max(1) {
            h.failures = 0;
            h.cooling_until = Some(Instant::now() + cooldown);
            return true;
        }
        false
    }
}

/// The targets of `route` in the order to try them, at most `max_attempts`: a weighted pick
/// first when weights are set, then the others in configured order; targets cooling down go
/// last (they are still tried if nothing else is left). `name_of` gives a target's provider
/// name and model, `roll` a number in `0..total weight`.
pub fn order(
    route: &Route,
    health: &Health,
    name_of: impl Fn(&Target) -> (String, String),
    roll: impl FnOnce(u32) -> u32,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..route.targets.len()).collect();
    let total: u32 = route.targets.iter().filter_map(|t| t.weight).sum();
    if total > 0 {
        let mut point = roll(total);
        let first = route.targets.iter().position(|t| {
            let w = t.weight.unwrap_or(0);
            if point < w {
                true
            } else {
                point -= w;
                false
            }
        });
        if let Some(first) = first {
            order.retain(|&i| i != first);
            order.insert(0, first);
        }
    }
    if health.all_well() {
        return order.into_iter().take(route.max_attempts.max(1)).collect();
    }
    let now = Instant::now();
    let (ready, cooling): (Vec<usize>, Vec<usize>) = order.into_iter().partition(|&i| {
        let (provider, model) = name_of(&route.targets[i]);
        !health.cooling(&provider, &model, now)
    });
    ready
        .into_iter()
        .chain(cooling)
        .take(route.max_attempts.max(1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(targets: &[(usize, Option<u32>)]) -> Route {
        Route {
            models: vec![WildMatch::new("claude-*")],
            model_names: vec!["claude-*".into()],
            keys: vec![],
            headers: vec![],
            targets: targets
                .iter()
                .map(|&(provider, weight)| Target {
                    provider,
                    model: None,
                    weight,
                })
                .collect(),
            max_attempts: 3,
        }
    }

    fn names(t: &Target) -> (String, String) {
        (format!("p{}", t.provider), "m".into())
    }

    #[test]
    fn configured_order_without_weights() {
        let r = route(&[(0, None), (1, None), (2, None), (3, None)]);
        assert_eq!(order(&r, &Health::default(), names, |_| 0), vec![0, 1, 2]);
    }

    #[test]
    fn weights_choose_the_first_attempt() {
        let r = route(&[(0, Some(1)), (1, Some(3)), (2, None)]);
        assert_eq!(order(&r, &Health::default(), names, |_| 0), vec![0, 1, 2]);
        assert_eq!(order(&r, &Health::default(), names, |_| 1), vec![1, 0, 2]);
        assert_eq!(order(&r, &Health::default(), names, |_| 3), vec![1, 0, 2]);
    }

    #[test]
    fn failing_targets_cool_down_and_go_last() {
        let r = route(&[(0, None), (1, None)]);
        let health = Health::default();
        assert!(!health.failed("p0", "m", 2, Duration::from_secs(60)));
        assert_eq!(order(&r, &health, names, |_| 0), vec![0, 1]);
        assert!(health.failed("p0", "m", 2, Duration::from_secs(60)));
        assert_eq!(order(&r, &health, names, |_| 0), vec![1, 0]);
        health.succeeded("p0", "m");
        assert!(!health.cooling("p0", "m", Instant::now() + Duration::from_secs(120)));
    }

    #[test]
    fn routes_match_keys_and_headers() {
        let mut r = route(&[(0, None)]);
        r.keys = vec!["alice".into()];
        r.headers = vec![("x-team".into(), "blue".into())];
        let mut headers = HeaderMap::new();
        assert!(!r.matches("claude-x", "alice", &headers));
        headers.insert("x-team", "blue".parse().unwrap());
        assert!(r.matches("claude-x", "alice", &headers));
        assert!(!r.matches("claude-x", "bob", &headers));
        assert!(!r.matches("gpt-4", "alice", &headers));
    }
}
