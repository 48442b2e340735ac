//! Dialog rules through the gateway against the sandbox.
