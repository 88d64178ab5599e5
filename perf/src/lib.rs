//! Load-test fixtures for Sluice that must never be the bottleneck.
//!
//! The protocol logic of the fast upstream lives here, apart from its sockets, so that it can be
//! unit-tested with plain bytes: [`catalog`] builds a realistic tool catalog, [`mcp`] answers
//! JSON-RPC requests from precomputed bytes, [`anthropic`] plays an LLM provider. The binaries
//! in `src/bin` only add I/O.

pub mod anthropic;
pub mod catalog;
pub mod mcp;
