//! `twofold-load report`: one table from a results file, each figure next to
//! its baseline and target.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::Value;

struct Row {
    label: String,
    figure: String,
    value: String,
    ratio: String,
    target: String,
    verdict: &'static str,
}

fn f(value: &Value) -> f64 {
    value.as_f64().unwrap_or(0.0)
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

pub fn table(text: &str) -> String {
    let records: Vec<Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let mut baselines: HashMap<String, f64> = HashMap::new();
    for record in &records {
        if record["kind"] == "baseline" {
            if let Some(name) = record["name"].as_str() {
                baselines.insert(name.to_string(), f(&record["per_second"]));
            }
        }
    }
    let h = baselines.get("H").copied().unwrap_or(0.0);
    let commit_baseline = |store: &str| -> (String, f64) {
        let name = format!("C_{store}");
        let value = baselines.get(&name).copied().unwrap_or(0.0);
        (name, value)
    };
    let ratio = |value: f64, baseline: f64| {
        if baseline > 0.0 {
            value / baseline
        } else {
            0.0
        }
    };
    let mut rows = Vec::new();
    let mut push =
        |label: &str, figure: String, value: String, ratio: String, target: String, verdict| {
            rows.push(Row {
                label: label.to_string(),
                figure,
                value,
                ratio,
                target,
                verdict,
            });
        };
    let mut full_signin_by_servers: HashMap<(String, u64), f64> = HashMap::new();
    for record in &records {
        let label = record["label"].as_str().unwrap_or("");
        let store = record["store"].as_str().unwrap_or("?");
        let latency = &record["latency"];
        let p = |key: &str| f(&latency[key]);
        let cores = f(&record["cores"]).max(1.0);
        let server_cpu = f(&record["cpu"]["server_cpu_seconds"]);
        let throughput = f(&record["throughput"]);
        let ok = f(&record["ok"]);
        let errors = f(&record["errors"]);
        match (record["kind"].as_str(), record["name"].as_str()) {
            (Some("baseline"), Some(name)) => push(
                "",
                format!("{name}: {}", record["what"].as_str().unwrap_or("")),
                format!("{:.0}/s", f(&record["per_second"])),
                "1.00".into(),
                "baseline".into(),
                "-",
            ),
            (Some("seed"), _) => {
                push(
                    label,
                    format!(
                        "seed {} users / {} events ({store}, read models {})",
                        record["users"],
                        record["events"],
                        record["read_models"].as_str().unwrap_or("")
                    ),
                    format!(
                        "{:.0} events/s load, {:.0} s in all",
                        f(&record["load_events_per_second"]),
                        f(&record["load_seconds"])
                            + f(&record["index_seconds"])
                            + f(&record["read_model_seconds"])
                            + f(&record["analyze_seconds"])
                    ),
                    "-".into(),
                    "1M users in minutes".into(),
                    "-",
                );
                if record["read_models"] == "projector" {
                    let rate = f(&record["read_model_events_per_second"]);
                    push(
                        label,
                        format!("Projector::rebuild during seed ({store})"),
                        format!("{rate:.0} events/s"),
                        "-".into(),
                        ">= 200,000 events/s".into(),
                        verdict(rate >= 200_000.0),
                    );
                }
                if !record["verify"].is_null() {
                    let rate = f(&record["verify"]["events_per_second"]);
                    push(
                        label,
                        format!("audit verify after seed ({store})"),
                        format!("{rate:.0} events/s"),
                        "-".into(),
                        ">= 200,000 events/s".into(),
                        verdict(rate >= 200_000.0),
                    );
                }
            }
            (Some("rebuild"), _) => {
                let rebuild = f(&record["rebuild_events_per_second"]);
                let verify = f(&record["verify_events_per_second"]);
                push(
                    label,
                    format!(
                        "`twofold projections rebuild`, {} events ({store})",
                        record["events"]
                    ),
                    format!("{rebuild:.0} events/s"),
                    "-".into(),
                    ">= 200,000 events/s".into(),
                    verdict(rebuild >= 200_000.0),
                );
                push(
                    label,
                    format!(
                        "`twofold audit verify`, {} events ({store})",
                        record["events"]
                    ),
                    format!("{verify:.0} events/s"),
                    "-".into(),
                    ">= 200,000 events/s".into(),
                    verdict(verify >= 200_000.0),
                );
            }
            (Some("memory"), _) => {
                let rss = f(&record["rss_mib"]);
                let (target, limit) = if label.contains("idle") {
                    ("<= 50 MB idle", 50.0)
                } else {
                    ("<= 150 MB at 1M users", 150.0)
                };
                push(
                    label,
                    format!("server RSS, {label}"),
                    format!("{rss:.1} MiB (peak {:.1})", f(&record["hwm_mib"])),
                    "-".into(),
                    target.into(),
                    verdict(rss * 1.048_576 <= limit),
                );
            }
            (Some("scenario"), Some("password")) => {
                let per_core = throughput / cores;
                let per_cpu = if server_cpu > 0.0 {
                    ok / server_cpu
                } else {
                    0.0
                };
                push(
                    label,
                    format!("password sign-in ({store}, {} server(s), c={})", record["servers"], record["concurrency"]),
                    format!("{throughput:.1}/s = {per_core:.1}/s per core; p50 {:.1} p99 {:.1} ms; {errors:.0} errors", p("p50_ms"), p("p99_ms")),
                    format!("{:.2} x H/core ({:.2} per server CPU-s)", ratio(per_core, h), ratio(per_cpu, h)),
                    ">= 0.85 x H per core".into(),
                    verdict(ratio(per_core, h) >= 0.85),
                );
            }
            (Some("scenario"), Some("full-signin")) => {
                let per_core = throughput / cores;
                let servers = record["servers"].as_u64().unwrap_or(1);
                full_signin_by_servers.insert((store.to_string(), servers), throughput);
                push(
                    label,
                    format!("full sign-in, password + TOTP ({store}, {servers} server(s))"),
                    format!(
                        "{throughput:.1}/s = {per_core:.1}/s per core; p50 {:.1} p99 {:.1} ms; verify step p99 {:.1} ms; {errors:.0} errors",
                        p("p50_ms"), p("p99_ms"), f(&record["verify_step"]["p99_ms"])
                    ),
                    format!("{:.2} x H/core", ratio(per_core, h)),
                    ">= 0.8 x H per core".into(),
                    verdict(ratio(per_core, h) >= 0.8),
                );
                let check = &record["store_check"];
                if let Some(commits) = check.get("commits") {
                    let durable = f(&commits["durable_commits_per_op"]);
                    push(
                        label,
                        format!("durable commits per full sign-in ({store})"),
                        format!(
                            "{durable:.2} (appends {:.2}, snapshots {:.2}, session touches {:.2}); besides, projection batches {:.2} committed without waiting for the disk",
                            f(&commits["event_appends_per_op"]),
                            f(&commits["snapshot_writes_per_op"]),
                            f(&commits["session_touches_per_op"]),
                            f(&commits["projection_batches_per_op"])
                        ),
                        "-".into(),
                        "<= 2".into(),
                        verdict(durable <= 2.0),
                    );
                }
                if check.is_object() {
                    let lost = check["events_missing_or_extra"].as_i64().unwrap_or(-1);
                    let duplicates = check["duplicate_sessions"].as_i64().unwrap_or(-1)
                        + check["duplicate_acceptances"].as_i64().unwrap_or(-1)
                        + check["totp_steps_accepted_twice"].as_i64().unwrap_or(-1);
                    push(
                        label,
                        format!("events stored vs acknowledged ({store}, {servers} server(s))"),
                        format!(
                            "{} stored / {} acknowledged; {duplicates} duplicated; {errors:.0} errors",
                            check["events_stored"], check["events_acknowledged"]
                        ),
                        "-".into(),
                        "0 lost, 0 duplicated, 0 errors".into(),
                        verdict(lost == 0 && duplicates == 0 && errors == 0.0),
                    );
                }
            }
            (Some("scenario"), Some("totp-verify")) => {
                let (name, c) = commit_baseline(store);
                push(
                    label,
                    format!(
                        "TOTP verify step alone ({store}, c={})",
                        record["concurrency"]
                    ),
                    format!(
                        "{throughput:.0}/s; p50 {:.1} p99 {:.1} ms; {errors:.0} errors",
                        p("p50_ms"),
                        p("p99_ms")
                    ),
                    format!("{:.2} x {name}", ratio(throughput, c)),
                    format!(">= 0.5 x {name}"),
                    verdict(ratio(throughput, c) >= 0.5),
                );
            }
            (Some("scenario"), Some("commands")) => {
                let (name, c) = commit_baseline(store);
                push(
                    label,
                    format!(
                        "commands over many users, PATCH email ({store}, c={})",
                        record["concurrency"]
                    ),
                    format!(
                        "{throughput:.0}/s; p50 {:.1} p99 {:.1} ms; {errors:.0} errors",
                        p("p50_ms"),
                        p("p99_ms")
                    ),
                    format!("{:.2} x {name}", ratio(throughput, c)),
                    format!(">= 0.6 x {name}"),
                    verdict(ratio(throughput, c) >= 0.6),
                );
            }
            (Some("scenario"), Some("history")) => {
                let r = f(&record["ratio_p50"]);
                push(
                    label,
                    format!("command latency, 10,000 vs 10 events ({store})"),
                    format!(
                        "p50 {:.2} vs {:.2} ms, p99 {:.2} vs {:.2} ms; first command on 10,000 events {:.0} ms",
                        f(&record["long"]["latency"]["p50_ms"]),
                        f(&record["short"]["latency"]["p50_ms"]),
                        f(&record["long"]["latency"]["p99_ms"]),
                        f(&record["short"]["latency"]["p99_ms"]),
                        f(&record["long"]["first_command_ms"])
                    ),
                    format!("{r:.2} (p99 {:.2})", f(&record["ratio_p99"])),
                    "<= 1.5".into(),
                    verdict(r <= 1.5),
                );
            }
            (Some("scenario"), Some("overload")) => {
                let answered = f(&record["requests"]);
                let fast = f(&record["rejected_within_50ms"]);
                let excess = (f(&record["offered"])
                    - f(&record["capacity"]) * f(&record["offering_seconds"]))
                .max(1.0);
                push(
                    label,
                    format!("overload at {:.0}/s ({store})", f(&record["offered_rate"])),
                    format!(
                        "goodput {:.1}/s; {fast:.0} of {answered:.0} answers were 429/503 within 50 ms; p50 {:.0} p99 {:.0} ms; RSS {:.0} -> peak {} MiB",
                        f(&record["goodput"]), p("p50_ms"), p("p99_ms"),
                        f(&record["rss_mib_before"]), record["rss_mib_peak_sampled"]
                    ),
                    format!("{:.2} of the excess refused fast", fast / excess),
                    "excess rejected fast (429/503 <= 50 ms), bounded memory".into(),
                    verdict(fast / excess >= 0.9 && p("p99_ms") <= 1000.0),
                );
            }
            (Some("scenario"), Some(name)) if name.starts_with("read-") => {
                let limit = match name {
                    "read-search" | "read-users-page" => 10.0,
                    _ => 5.0,
                };
                push(
                    label,
                    format!("{name} ({store}, c={})", record["concurrency"]),
                    format!("{throughput:.0}/s; p50 {:.2} p95 {:.2} p99 {:.2} ms; {errors:.0} errors {}", p("p50_ms"), p("p95_ms"), p("p99_ms"), record["outcomes"]),
                    "-".into(),
                    format!("p99 <= {limit} ms at 1M users / 10M events"),
                    verdict(p("p99_ms") <= limit && errors == 0.0),
                );
            }
            (Some("scenario"), Some("enroll")) => push(
                label,
                format!("TOTP enrollment via API ({store})"),
                format!("{throughput:.1} users/s; {errors:.0} errors"),
                "-".into(),
                "-".into(),
                "-",
            ),
            _ => {}
        }
    }
    for ((store, servers), throughput) in &full_signin_by_servers {
        if *servers > 1 {
            if let Some(single) = full_signin_by_servers.get(&(store.clone(), 1)) {
                push(
                    "",
                    format!("full sign-in, {servers} servers vs 1 ({store}, same machine)"),
                    format!("{throughput:.1}/s vs {single:.1}/s"),
                    format!("{:.2}", ratio(*throughput, *single)),
                    "no loss of throughput, 0 errors".into(),
                    verdict(ratio(*throughput, *single) >= 0.9),
                );
            }
        }
    }
    let mut out = String::new();
    let _ = writeln!(out, "| run | figure | measured | ratio | target | |");
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- |");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            row.label, row.figure, row.value, row.ratio, row.target, row.verdict
        );
    }
    out
}
