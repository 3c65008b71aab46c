use super::*;
use crate::stats::Latency;

fn server() -> ServerStats {
    crate::stats::Stats::default().snapshot()
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

#[test]
fn every_figure_is_exported_under_its_name_and_labels() {
    let mut s = server();
    s.connections = 3;
    s.connections_accepted = 11;
    s.over_capacity_rejections = 2;
    s.ip_refusals = 4;
    s.overload_closes = 5;
    s.sessions = 1;
    s.sessions_opened_v1 = 6;
    s.sessions_opened_legacy = 27;
    s.slow_consumer_closes = 7;
    s.token_expired_closes = 8;
    s.auth_refusals_http = 9;
    s.auth_budget_refusals = 10;
    s.pending_reply_bytes = 12;
    s.frame_writes = 3;
    s.frames_written = 40;
    s.publish_refusals[3] = 26;
    let h = HubStats {
        channels: 13,
        subscriptions: 14,
        backlog_bytes: 15,
        msg_ids: 16,
        reply_routes: 17,
        publishes: 18,
        deliveries: 19,
        dedupe_hits: 20,
        dropped_oldest: 21,
        dropped_latest: 22,
        resumes_recovered: 23,
        resumes_expired: 24,
        resumes_epoch_changed: 25,
        resume_lost_messages: 28,
        subscribes: 29,
        log_reads: 33,
        replies: 30,
        backlog_evicted: 31,
        backlog_messages: 32,
    };
    let text = render(
        s,
        h,
        &sources(&Node::starting(Vec::new()), &Latency::default()),
    );
    let got = lines(&text);
    for want in [
        format!("tslm_build_info{{version=\"{VERSION}\"}} 1"),
        "tslm_connections 3".to_owned(),
        "tslm_resume_lost_messages_total 28".to_owned(),
        "tslm_subscribes_total 29".to_owned(),
        "tslm_log_reads_total 33".to_owned(),
        "tslm_replies_total 30".to_owned(),
        "tslm_backlog_evictions_total 31".to_owned(),
        "tslm_backlog_messages 32".to_owned(),
        "tslm_connections_accepted_total 11".to_owned(),
        "tslm_connections_refused_total{reason=\"over_capacity\"} 2".to_owned(),
        "tslm_connections_refused_total{reason=\"per_address_limit\"} 4".to_owned(),
        "tslm_connections_refused_total{reason=\"overload\"} 5".to_owned(),
        "tslm_sessions 1".to_owned(),
        "tslm_sessions_opened_total{dialect=\"v1\"} 6".to_owned(),
        "tslm_sessions_opened_total{dialect=\"legacy\"} 27".to_owned(),
        "tslm_sessions_closed_by_server_total{code=\"4000\"} 7".to_owned(),
        "tslm_sessions_closed_by_server_total{code=\"4003\"} 8".to_owned(),
        "tslm_sessions_closed_by_server_total{code=\"1001\"} 0".to_owned(),
        "tslm_auth_refusals_total{kind=\"http\"} 9".to_owned(),
        "tslm_auth_refusals_total{kind=\"handshake\"} 0".to_owned(),
        "tslm_auth_refusals_total{kind=\"over_budget\"} 10".to_owned(),
        "tslm_pending_reply_bytes 12".to_owned(),
        "tslm_frame_writes_total 3".to_owned(),
        "tslm_frames_written_total 40".to_owned(),
        "tslm_publishes_refused_total{code=\"forbidden\"} 26".to_owned(),
        "tslm_publishes_refused_total{code=\"not_found\"} 0".to_owned(),
        "tslm_channels 13".to_owned(),
        "tslm_subscriptions 14".to_owned(),
        "tslm_backlog_bytes 15".to_owned(),
        "tslm_msg_ids 16".to_owned(),
        "tslm_reply_routes 17".to_owned(),
        "tslm_publishes_total 18".to_owned(),
        "tslm_deliveries_total 19".to_owned(),
        "tslm_dedupe_hits_total 20".to_owned(),
        "tslm_messages_dropped_total{policy=\"drop_oldest\"} 21".to_owned(),
        "tslm_messages_dropped_total{policy=\"latest\"} 22".to_owned(),
        "tslm_resumes_total{outcome=\"recovered\"} 23".to_owned(),
        "tslm_resumes_total{outcome=\"expired\"} 24".to_owned(),
        "tslm_resumes_total{outcome=\"epoch_changed\"} 25".to_owned(),
    ] {
        assert!(got.contains(&want.as_str()), "missing `{want}` in:\n{text}");
    }
    // Every series has a HELP and a TYPE line for its metric.
    let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
    assert_eq!(types, 30, "{text}");
}

#[test]
fn the_start_time_is_the_nodes() {
    let node = Node::starting(Vec::new());
    let text = render(
        server(),
        HubStats::default(),
        &sources(&node, &Latency::default()),
    );
    let line = lines(&text)
        .into_iter()
        .find(|l| l.starts_with("tslm_process_start_time_seconds "))
        .expect("a start time");
    let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((v - node.start_time_seconds()).abs() < 1e-3, "{line}");
    assert!(v > 1.6e9, "{line}");
}

#[test]
fn every_metric_is_in_the_operations_reference() {
    let doc = include_str!("../../../../docs/operations.md");
    let node = Node::starting(Vec::new());
    node.set_slots(vec![crate::node::Slots {
        listener: "public".to_owned(),
        limit: std::sync::Arc::new(tokio::sync::Semaphore::new(3)),
        max: 3,
    }]);
    let text = render(
        server(),
        HubStats::default(),
        &sources(&node, &Latency::default()),
    );
    assert!(
        lines(&text).contains(&"tslm_listener_max_connections{listener=\"public\"} 3"),
        "{text}"
    );
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert_eq!(names.len(), 32, "{text}");
    for name in names {
        assert!(
            doc.contains(&format!("| `{name}` |")),
            "`{name}` is not in the table of docs/operations.md, \"Metrics\""
        );
    }
}

fn sources<'a>(node: &'a Node, publish_seconds: &'a Latency) -> Sources<'a> {
    Sources {
        node,
        publish_seconds,
        verifier: None,
    }
}
