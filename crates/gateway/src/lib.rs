//! phigate: a PostgreSQL gateway for patient data.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library ([`cli`]). The data path of one
//! session is in [`session`]; the process around it (listeners, shutdown, health) in [`server`].

pub mod admission;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod cancel;
pub mod cli;
pub mod config;
pub mod control;
pub mod counts;
pub mod demo;
pub mod fsutil;
pub mod http;
pub mod live;
pub mod logging;
pub mod login;
pub mod masking;
pub mod mcp;
pub mod metrics;
pub mod net;
pub mod pgerror;
pub mod policy;
pub mod recording;
pub mod reload;
pub mod server;
pub mod session;
pub mod state;
pub mod text;
pub mod tls;
pub mod upstream;
