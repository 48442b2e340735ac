//! Temporary stand-in until the sandbox lands.
#[derive(Clone)]
pub struct Sandbox;
impl Sandbox {
    pub fn new(_k: Option<String>) -> Self {
        Sandbox
    }
    pub async fn serve(
        &self,
        _l: tokio::net::TcpListener,
        _s: impl std::future::Future<Output = ()>,
    ) {
    }
}
pub mod seed {
    pub const OWNER: u64 = 1;
    pub const OCCUPANT: u64 = 2;
    pub const GROUP_ID: &str = "g";
    pub const PRIVATE_ID: &str = "p";
}
