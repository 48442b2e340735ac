//! Tests of `conn`.

use super::*;

const T: Duration = Duration::from_secs(10);

fn signal(conn: &Shared) -> u8 {
    conn.signal.load(Ordering::Acquire)
}

#[test]
fn a_connection_that_never_sends_a_head_is_cut_after_the_timeout() {
    let all = Connections::default();
    let t0 = Instant::now();
    let conn = all.add(t0);
    assert_eq!(all.sweep(t0 + T - Duration::from_millis(1), T), 0);
    assert_eq!(signal(&conn), 0);
    assert_eq!(all.sweep(t0 + T, T), 1);
    assert_eq!(signal(&conn), CUT);
    // Cut connections leave the list: a second sweep does not cut them again.
    assert_eq!(all.sweep(t0 + 3 * T, T), 0);
    assert!(all.is_empty());
}

#[test]
fn a_request_in_progress_is_never_cut() {
    let all = Connections::default();
    let t0 = Instant::now();
    let conn = all.add(t0);
    let token = conn.request();
    for i in 1..10 {
        assert_eq!(all.sweep(t0 + i * T, T), 0);
    }
    assert_eq!(signal(&conn), 0);
    drop(token);
    // Idle again from the first sweep that sees it so, and asked to close a whole timeout
    // after; it served a request, so it may say goodbye (HTTP/2 GOAWAY).
    let seen = t0 + 10 * T;
    assert_eq!(all.sweep(seen, T), 0);
    assert_eq!(all.sweep(seen + T - Duration::from_millis(1), T), 0);
    assert_eq!(all.sweep(seen + T, T), 1);
    assert_eq!(signal(&conn), IDLE);
    // Still there a timeout later: cut.
    assert_eq!(all.sweep(seen + 2 * T - Duration::from_millis(1), T), 0);
    assert_eq!(all.sweep(seen + 2 * T, T), 1);
    assert_eq!(signal(&conn), IDLE | CUT);
    assert!(all.is_empty());
}

#[test]
fn a_request_finished_between_sweeps_restarts_the_wait() {
    let all = Connections::default();
    let t0 = Instant::now();
    let conn = all.add(t0);
    assert_eq!(all.sweep(t0 + T / 2, T), 0);
    // A whole request between two sweeps: neither sweep saw it in progress.
    drop(conn.request());
    assert_eq!(
        all.sweep(t0 + T, T),
        0,
        "the finished request restarts the wait"
    );
    assert_eq!(all.sweep(t0 + 2 * T - Duration::from_millis(1), T), 0);
    assert_eq!(all.sweep(t0 + 2 * T, T), 1);
    assert_eq!(signal(&conn), IDLE);
}

#[test]
fn a_connection_asked_to_close_may_finish_a_request_and_is_then_cut() {
    let all = Connections::default();
    let t0 = Instant::now();
    let conn = all.add(t0);
    drop(conn.request());
    assert_eq!(all.sweep(t0, T), 0);
    assert_eq!(all.sweep(t0 + T, T), 1);
    assert_eq!(signal(&conn), IDLE);
    // A request that was on the wire when the GOAWAY went out: never cut while in progress.
    let token = conn.request();
    assert_eq!(all.sweep(t0 + 5 * T, T), 0);
    drop(token);
    // Then one whole timeout idle, and cut without being asked again.
    let seen = t0 + 6 * T;
    assert_eq!(all.sweep(seen, T), 0);
    assert_eq!(all.sweep(seen + T - Duration::from_millis(1), T), 0);
    assert_eq!(all.sweep(seen + T, T), 1);
    assert_eq!(signal(&conn), IDLE | CUT);
}

#[test]
fn ended_connections_are_forgotten_and_drain_flags_the_rest() {
    let all = Connections::default();
    let t0 = Instant::now();
    let a = all.add(t0);
    let b = all.add(t0);
    drop(b);
    assert_eq!(all.len(), 1);
    all.drain();
    assert_eq!(signal(&a), DRAIN);
    all.sweep(t0, T);
    assert_eq!(all.entries.lock().unwrap().list.len(), 1);
}

#[test]
fn short_connections_between_sweeps_do_not_pile_up() {
    let all = Connections::default();
    let t0 = Instant::now();
    let open: Vec<_> = (0..100).map(|_| all.add(t0)).collect();
    for _ in 0..100_000 {
        drop(all.add(t0));
    }
    let held = all.entries.lock().unwrap().list.len();
    assert!(
        held <= 2 * 100 + 64,
        "{held} entries for 100 open connections"
    );
    assert_eq!(all.len(), open.len());
}

#[test]
fn the_sweep_interval_is_a_quarter_of_the_timeout_and_at_least_10ms() {
    assert_eq!(sweep_interval(T), Duration::from_millis(2500));
    assert_eq!(
        sweep_interval(Duration::from_millis(8)),
        Duration::from_millis(10)
    );
}
