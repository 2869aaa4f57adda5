//! Who may do what: the policy decisions the server makes about clients and recipients.

pub mod clients;
pub mod recipients;
