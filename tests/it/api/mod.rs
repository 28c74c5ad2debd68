//! The control plane's REST API end to end: each scenario runs against
//! in-memory SQLite and against a fresh Postgres database.

mod accounts;
mod attachments;
mod conversations;
mod errors;
mod messages;
mod notifications;
mod own_data;
mod search;
