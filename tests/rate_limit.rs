//! Rate limiting through the gateway.
