//! Fuzzes the query parser and the answer path: any bytes must parse or be
//! rejected without a panic; what parses must also decode with hickory-proto
//! (an independent decoder), and the response built for it must decode too.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use podnet_core::dns::{Config, Index, Objects};
use podnet_dns::server::{Action, Shared, answer};
use podnet_dns::wire::parse_query;

fn shared() -> &'static std::sync::Arc<Shared> {
    static S: OnceLock<std::sync::Arc<Shared>> = OnceLock::new();
    S.get_or_init(|| Shared::new(Index::build(Config::default(), &Objects::default()), None))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = parse_query(data) {
        assert!(
            hickory_proto::op::Message::from_vec(data).is_ok(),
            "accepted a query hickory-proto rejects: {q:?}"
        );
    }
    let mut out = Vec::new();
    if answer(shared(), data, false, &mut out) == Action::Reply {
        assert!(out.len() <= 1232, "UDP answer over our payload size");
        hickory_proto::op::Message::from_vec(&out).expect("our response decodes");
    }
});
