//! Policy text -> `qbgate::policy::compile_with_env`: never panics, whatever the YAML.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| (name == "QB_API_KEY").then(|| "fuzz-upstream-key".to_string());
    match qbgate::policy::compile_with_env(text, &env) {
        // Errors must render (the CLI prints them) without panicking.
        Err(e) => drop(e.to_string()),
        Ok(p) => drop(std::hint::black_box(p)),
    }
});
