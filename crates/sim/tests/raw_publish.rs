//! `POST /sim/publish` with routing keys that are not UTF-8, on a simulator of its own: such a
//! message would break any `amqprs` consumer bound to it, so it must not reach the consumers
//! of the shared simulator's tests.

use std::time::Duration;

use scmb_sim::rawamqp::RawConnection;
use scmb_sim::testkit::{start_stoppable, test_config};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routing_key_that_is_not_utf8_reaches_the_scmb_exchange_byte_for_byte() {
    let (info, stopper) = start_stoppable(test_config("rawkey"));
    let c = info.client();
    let publish = |query: String, body: &'static [u8]| {
        let c = c.clone();
        async move {
            let r = c
                .http
                .post(format!("{}/sim/publish?{query}", c.rest_url))
                .body(body)
                .send()
                .await
                .expect("publish");
            let status = r.status();
            (status, r.json::<Value>().await.expect("json"))
        }
    };
    // The appliance's read-only client, reading raw bytes.
    let mut consumer = RawConnection::open(&info.default_target())
        .await
        .expect("the CN default client connects");
    let queue = consumer
        .consume("scmb", &[b"scmb.alerts.#"])
        .await
        .expect("server-named queue, bound and consumed");
    assert!(queue.starts_with("amq.gen-"), "{queue}");

    // Given as hex.
    let key = b"scmb.alerts.Created./rest/alerts/\xff\xfe1";
    let body = br#"{"resourceUri":"/rest/alerts/1","changeType":"Created"}"#;
    let (status, r) = publish(format!("routingKeyHex={}", hex(key)), body).await;
    assert!(status.is_success(), "{r}");
    assert_eq!(r["confirmed"], true, "{r}");
    assert_eq!(r["routingKeyHex"], hex(key));
    assert_eq!(r["exchange"], "scmb");
    let d = consumer
        .next_delivery(WAIT)
        .await
        .expect("reading")
        .expect("the message arrives");
    assert_eq!(d.routing_key, key.to_vec());
    assert_eq!(d.exchange, b"scmb".to_vec());
    assert_eq!(d.body, body.to_vec());

    // Given percent-encoded (an invalid UTF-8 sequence, then a lone continuation byte).
    let (status, r) = publish(
        "routingKey=scmb.alerts.Updated.%2Frest%2Falerts%2F%C3%28%80".into(),
        b"",
    )
    .await;
    assert!(status.is_success(), "{r}");
    let d = consumer
        .next_delivery(WAIT)
        .await
        .expect("reading")
        .expect("the message arrives");
    assert_eq!(
        d.routing_key,
        b"scmb.alerts.Updated./rest/alerts/\xc3\x28\x80".to_vec()
    );
    assert!(d.body.is_empty());

    // A UTF-8 key still goes through the ordinary publisher, and arrives the same.
    let (status, r) = publish(
        "routingKey=scmb.alerts.Created.%2Frest%2Falerts%2F%C3%A9".into(),
        b"x",
    )
    .await;
    assert!(status.is_success(), "{r}");
    assert!(r.get("confirmed").is_none(), "{r}");
    let d = consumer
        .next_delivery(WAIT)
        .await
        .expect("reading")
        .expect("the message arrives");
    assert_eq!(
        d.routing_key,
        "scmb.alerts.Created./rest/alerts/é".as_bytes()
    );

    // What is refused.
    for (query, why) in [
        (format!("routingKeyHex={}&routingKey=x", hex(key)), "both"),
        ("routingKeyHex=fz".to_string(), "not hex"),
        (
            format!("routingKeyHex={}", "ff".repeat(256)),
            "over 255 bytes",
        ),
        ("exchange=scmb".to_string(), "no key"),
    ] {
        let (status, r) = publish(query, b"").await;
        assert_eq!(status.as_u16(), 400, "{why}: {r}");
        assert_eq!(r["errorCode"], "SIM_BAD_REQUEST", "{why}: {r}");
    }
    // Nothing else was delivered.
    assert_eq!(
        consumer
            .next_delivery(Duration::from_millis(300))
            .await
            .expect("reading"),
        None
    );
    consumer.close().await;
    stopper.stop();
}
