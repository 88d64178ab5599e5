//! Prometheus metrics, rendered on the admin listener's `/metrics`.
//!
//! Every metric Sluice exports is declared here, with its help text; the README lists them.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::upstream::{Health, Upstreams};

/// Latency buckets from 50 µs to 10 s: gateway overhead lives at the low end, tools at the high.
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route and status.
    pub requests: IntCounterVec,
    /// Tool calls by server, tool and outcome.
    pub tool_calls: IntCounterVec,
    /// Time Sluice itself adds to a request (total minus upstream), by route.
    pub overhead: HistogramVec,
    /// Time spent waiting for upstream servers, by server.
    pub upstream_duration: HistogramVec,
    /// 1 when a server is connected and synced, else 0.
    pub upstream_up: IntGaugeVec,
    /// Tools in the merged catalog.
    pub catalog_tools: IntGauge,
    /// Sessions in use on this instance (not ended, not idle).
    pub active_sessions: IntGauge,
    /// Client connections open.
    pub open_connections: IntGauge,
    /// Client connections turned away at `limits.max_connections`.
    pub refused_connections: IntCounter,
    /// Requests refused by a rate limit, by key.
    pub rate_limited: IntCounterVec,
    /// Requests refused for want of a valid key.
    pub auth_failures: IntCounter,
    /// `/mcp` requests by the protocol version they speak (negotiated in a session, or declared
    /// by a stateless request).
    pub mcp_requests: IntCounterVec,
    /// Notification streams (`GET /mcp`) open on this instance.
    pub notification_streams: IntGauge,
    /// Answers sent as an SSE stream because the upstream sent something before its answer.
    pub streamed_answers: IntCounter,
    /// LLM requests by the provider that served them (`none` if none did), model and outcome.
    pub llm_requests: IntCounterVec,
    /// Model tokens by provider, model and kind (input, output, cache_read, cache_write).
    pub llm_tokens: IntCounterVec,
    /// Attempts that failed over to the next target, by the provider that failed.
    pub llm_fallbacks: IntCounterVec,
    /// 1 while the Redis shared with other instances answers (only with `state.redis`).
    pub redis_up: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("sluice_requests_total", "HTTP requests by route and status"),
            &["route", "status"],
        )
        .expect("valid metric");
        let tool_calls = IntCounterVec::new(
            Opts::new(
                "sluice_tool_calls_total",
                "tools/call requests by server, tool and outcome (ok, tool_error, error, denied)",
            ),
            &["server", "tool", "outcome"],
        )
        .expect("valid metric");
        let overhead = HistogramVec::new(
            HistogramOpts::new(
                "sluice_gateway_overhead_seconds",
                "Time Sluice adds to a request: total minus upstream time",
            )
            .buckets(BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "sluice_upstream_duration_seconds",
                "Time waiting for an upstream MCP server per request",
            )
            .buckets(BUCKETS.to_vec()),
            &["server"],
        )
        .expect("valid metric");
        let upstream_up = IntGaugeVec::new(
            Opts::new(
                "sluice_upstream_up",
                "1 when the upstream server is connected and synced",
            ),
            &["server"],
        )
        .expect("valid metric");
        let catalog_tools = IntGauge::new("sluice_catalog_tools", "Tools in the merged catalog")
            .expect("valid metric");
        let active_sessions = IntGauge::new(
            "sluice_active_sessions",
            "MCP sessions in use on this instance: not ended with DELETE, not idle (sessions are portable, so this is per instance)",
        )
        .expect("valid metric");
        let open_connections = IntGauge::new("sluice_open_connections", "Client connections open")
            .expect("valid metric");
        let refused_connections = IntCounter::new(
            "sluice_refused_connections_total",
            "Client connections answered 503 and closed at `limits.max_connections`",
        )
        .expect("valid metric");
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "sluice_rate_limited_total",
                "Requests refused with 429 by a key's rate limit",
            ),
            &["key"],
        )
        .expect("valid metric");
        let auth_failures =
            IntCounter::new("sluice_auth_failures_total", "Requests refused with 401")
                .expect("valid metric");
        let mcp_requests = IntCounterVec::new(
            Opts::new(
                "sluice_mcp_requests_total",
                "/mcp requests after initialize, by protocol version (negotiated in the session, or declared by a 2026-07-28 request)",
            ),
            &["protocol"],
        )
        .expect("valid metric");
        let notification_streams = IntGauge::new(
            "sluice_notification_streams",
            "Notification streams (GET /mcp, subscriptions/listen) open on this instance",
        )
        .expect("valid metric");
        let streamed_answers = IntCounter::new(
            "sluice_streamed_answers_total",
            "Answers sent as an SSE stream (progress, log messages or requests to the client came first)",
        )
        .expect("valid metric");
        let llm_requests = IntCounterVec::new(
            Opts::new(
                "sluice_llm_requests_total",
                "LLM requests by serving provider, model asked of it, and outcome (ok, error, denied)",
            ),
            &["provider", "model", "outcome"],
        )
        .expect("valid metric");
        let llm_tokens = IntCounterVec::new(
            Opts::new(
                "sluice_llm_tokens_total",
                "Model tokens by provider, model and kind (input, output, cache_read, cache_write)",
            ),
            &["provider", "model", "kind"],
        )
        .expect("valid metric");
        let llm_fallbacks = IntCounterVec::new(
            Opts::new(
                "sluice_llm_fallbacks_total",
                "LLM attempts that failed before answering and fell back to the next target, by provider",
            ),
            &["provider"],
        )
        .expect("valid metric");
        let redis_up = IntGauge::new(
            "sluice_redis_up",
            "1 while the Redis shared with other instances answers (with state.redis); 0 while Sluice counts locally",
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(redis_up.clone()),
            Box::new(llm_requests.clone()),
            Box::new(llm_tokens.clone()),
            Box::new(llm_fallbacks.clone()),
            Box::new(notification_streams.clone()),
            Box::new(mcp_requests.clone()),
            Box::new(streamed_answers.clone()),
            Box::new(tool_calls.clone()),
            Box::new(overhead.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(upstream_up.clone()),
            Box::new(catalog_tools.clone()),
            Box::new(active_sessions.clone()),
            Box::new(open_connections.clone()),
            Box::new(refused_connections.clone()),
            Box::new(rate_limited.clone()),
            Box::new(auth_failures.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            tool_calls,
            overhead,
            upstream_duration,
            upstream_up,
            catalog_tools,
            active_sessions,
            open_connections,
            refused_connections,
            rate_limited,
            auth_failures,
            notification_streams,
            streamed_answers,
            mcp_requests,
            llm_requests,
            llm_tokens,
            llm_fallbacks,
            redis_up,
        }
    }

    /// Count a finished HTTP request.
    pub fn observe_request(
        &self,
        route: &str,
        status: u16,
        total: Duration,
        upstream: Option<Duration>,
    ) {
        self.requests
            .with_label_values(&[route, status_label(status)])
            .inc();
        let overhead = total.saturating_sub(upstream.unwrap_or_default());
        self.overhead
            .with_label_values(&[route])
            .observe(overhead.as_secs_f64());
    }

    /// Render every metric in the Prometheus text format, refreshing the gauges first.
    pub fn render(&self, upstreams: &Upstreams) -> Vec<u8> {
        // Servers removed by a reload must not linger in the gauge.
        self.upstream_up.reset();
        for upstream in upstreams.all().iter() {
            self.upstream_up
                .with_label_values(&[&*upstream.name])
                .set(i64::from(upstream.health() == Health::Ready));
        }
        self.catalog_tools
            .set(upstreams.catalog().load().len() as i64);
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!("cannot encode metrics: {e}");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        202 => "202",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        406 => "406",
        408 => "408",
        413 => "413",
        415 => "415",
        429 => "429",
        431 => "431",
        500..=599 => "5xx",
        _ => "other",
    }
}
