//! The socket under load (issue 17, fourth part): 200 concurrent clients, a thousand malformed or over-long
//! messages, slow writers that never finish their line, and a client that vanishes in the middle of its push. The
//! daemon stays up, keeps answering status, bounds its memory, and the orphaned push completes.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::support::{GENERATE, World, alive, stand_in_world, touch};

/// The daemon's resident memory in KiB.
fn rss_kib(pid: i32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A memory figure of `/proc/<pid>/status` in KiB.
fn status_kib(pid: i32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// One request on its own connection to the socket at `socket`; the lines the daemon sent back (none if it closed
/// first).
fn exchange(socket: &std::path::Path, payload: &[u8]) -> Vec<String> {
    let Ok(mut s) = UnixStream::connect(socket) else { return Vec::new() };
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut hello = String::new();
    if reader.read_line(&mut hello).is_err() {
        return Vec::new();
    }
    let _ = s.write_all(payload);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut rest = String::new();
    let _ = reader.read_to_string(&mut rest);
    std::iter::once(hello).chain(rest.lines().map(String::from)).collect()
}

fn status_line() -> Vec<u8> {
    format!("{{\"protocol\":{},\"cmd\":\"status\",\"all\":true}}\n", dreamerd::ipc::PROTOCOL).into_bytes()
}

#[test]
fn two_hundred_clients_a_thousand_bad_messages_and_slow_writers_leave_the_daemon_answering() {
    let w = stand_in_world();
    w.push_ok();
    let pid = w.daemon_pid().expect("the daemon runs");
    let before = rss_kib(pid);

    // Fifty slow writers that never finish their line, held throughout.
    let slow: Vec<UnixStream> = (0..50)
        .filter_map(|_| {
            let mut s = UnixStream::connect(w.socket()).ok()?;
            s.write_all(b"{\"protocol\":5,\"cmd\":\"sta").ok()?;
            Some(s)
        })
        .collect();
    assert_eq!(slow.len(), 50);

    // Two hundred clients at once: every one gets its status.
    let socket = w.socket();
    let answered = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..200).map(|_| scope.spawn(|| exchange(&socket, &status_line()))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
    });
    for lines in &answered {
        let last: Value = serde_json::from_str(lines.last().expect("a reply")).unwrap();
        assert_eq!(
            (last["type"].as_str(), last["exit"].as_i64()),
            (Some("result"), Some(0)),
            "{lines:?}\n{}",
            w.daemon_log()
        );
    }

    // A thousand malformed or over-long messages, eight at a time: each refused, none takes the daemon down.
    let deep = "[".repeat(100_000) + "\n";
    let long = format!("{{\"protocol\":5,\"cmd\":\"status\",\"dir\":\"{}\"}}\n", "x".repeat(2 << 20));
    let bad: Vec<Vec<u8>> = vec![
        b"not json\n".to_vec(),
        b"\xff\xfe\x00\x01\n".to_vec(),
        b"{\"protocol\":5}\n".to_vec(),
        b"{\"protocol\":5,\"cmd\":\"push\",\"dir\":7}\n".to_vec(),
        b"{\"protocol\":5,\"cmd\":\"restore\",\"dir\":\"relative\",\"push\":[1,2]}\n".to_vec(),
        b"{\"protocol\":4294967295,\"cmd\":\"stop\"}\n".to_vec(),
        b"\n".to_vec(),
        vec![0u8; 4096],
        deep.into_bytes(),
        long.into_bytes(),
    ];
    std::thread::scope(|scope| {
        for t in 0..8 {
            let bad = &bad;
            let socket = &socket;
            scope.spawn(move || {
                for i in 0..125 {
                    let lines = exchange(socket, &bad[(t * 125 + i) % bad.len()]);
                    // Refused with an error (or closed, for a line past the size limit); never a result.
                    assert!(lines.iter().all(|l| !l.contains("\"result\"")), "{lines:?}");
                }
            });
        }
    });

    assert!(alive(pid), "the daemon is still up");
    let (code, v) = w.json("dreamerd", &["status", "--all"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(w.daemon_pid(), Some(pid), "the same daemon");
    let after = rss_kib(pid);
    assert!(after < before + 100 * 1024, "memory stays bounded: {before} KiB before, {after} KiB after");
    drop(slow);
}

#[test]
fn a_push_whose_client_vanished_is_completed_by_the_daemon() {
    let w = World::empty();
    // A migrate slow enough to kill the client in its middle.
    w.stand_ins(GENERATE, "sleep 2\necho migrated\n");
    let first = w.push_ok();
    w.write("src/schema.ts", "export const x = 2;\n");
    let mut client =
        w.cmd("dreamer", &["push"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut err = BufReader::new(client.stderr.take().unwrap());
    let mut line = String::new();
    while err.read_line(&mut line).unwrap() > 0 && !line.contains("mig.sh") {
        line.clear();
    }
    assert!(line.contains("mig.sh"), "the push reached migrate: {line}");
    client.kill().unwrap();
    client.wait().unwrap();
    // The daemon finishes it: recorded, clean, nothing interrupted.
    w.wait_for("the orphaned push to finish", || {
        let s = w.status();
        s["state"] == "clean" && s["last_push"]["id"] != first.as_str() && s.get("interrupted").is_none()
    });
    let history = w.run("dreamerd", &["history", "--json"]);
    let pushes: Value = serde_json::from_str(&history.stdout).unwrap();
    assert_eq!(pushes["pushes"].as_array().unwrap().len(), 2, "{pushes}");
}

#[test]
fn memory_taken_by_a_burst_of_twenty_thousand_files_is_given_back_once_quiet() {
    let _burst = crate::support::one_burst_at_a_time();
    let w = stand_in_world();
    w.push_ok();
    let pid = w.daemon_pid().expect("the daemon runs");
    // The heap the daemon holds (its code's pages, resident as more of it runs, are the binary's, not taken).
    let anon = || status_kib(pid, "RssAnon:");
    // Idle: once the push's memory was given back (a second after the daemon went quiet) and the runtime's spare
    // threads retired.
    std::thread::sleep(Duration::from_secs(12));
    let idle = anon();
    let burst = w.path("drizzle/burst");
    std::fs::create_dir(&burst).unwrap();
    for i in 0..20_000 {
        std::fs::write(burst.join(format!("{i:05}.sql")), "x").unwrap();
    }
    w.wait_for("the burst in status", || {
        w.status()["violations"].as_array().is_some_and(|v| v.len() >= 20_000)
    });
    let peak = anon();
    assert!(peak > idle + 16 * 1024, "the burst took memory ({idle} KiB idle, {peak} KiB at its peak)");
    // Eight more bursts over the same files, as checkouts that touch them all: each loses events, and each loss
    // asks for a rescan while one runs. The daemon makes a few scans and goes quiet; it never works through a queue
    // of scans long after the bursts (it once did, for minutes).
    let rescans = || w.status()["watch"]["rescans"].as_u64().expect("rescans");
    let before = rescans();
    let files: Vec<_> = (0..20_000).map(|i| burst.join(format!("{i:05}.sql"))).collect();
    for _ in 0..8 {
        files.iter().for_each(|f| touch(f));
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut last = u64::MAX;
    w.wait_for("the rescans to stop", || {
        let now = rescans();
        let settled = now == last;
        last = now;
        std::thread::sleep(Duration::from_secs(1));
        settled
    });
    assert!(last - before <= 12, "{} rescans for eight bursts", last - before);
    let (code, v) = w.json("dreamer", &["database", "restore"]);
    assert_eq!(code, 0, "{v}");
    // Back to idle (within a few MiB) by itself: nothing is asked of the daemon meanwhile.
    w.wait_for(&format!("the heap to go back to its idle {idle} KiB (peak {peak} KiB)"), || {
        anon() < idle + 6 * 1024
    });
    assert_eq!(w.daemon_pid(), Some(pid), "the same daemon");
}
