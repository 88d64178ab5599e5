//! Sluice's request pipeline, free of Pingora: bytes and headers in, decisions and bytes out.
//!
//! - [`mcp`]: the `/mcp` endpoint and its stages.
//! - [`jsonrpc`], [`protocol`], [`session`]: the MCP wire.
//! - [`catalog`], [`naming`]: the merged tool catalog and its names.
//! - [`upstream`]: clients for upstream MCP servers and their supervisors.
//! - [`llm`]: the LLM routes; [`state`]: counted state (spend, token limits).

pub mod audit;
pub mod auth;
pub mod catalog;
pub mod codemode;
pub mod jsonrpc;
pub mod lines;
pub mod llm;
pub mod mcp;
pub mod metrics;
pub mod naming;
pub mod policy;
pub mod protocol;
pub mod ratelimit;
pub mod session;
pub mod session_book;
pub mod sse;
pub mod state;
pub mod upstream;
