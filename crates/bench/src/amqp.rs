//! The harness's own AMQP work: filling queues as the admin identity, queue bookkeeping, and
//! the no-op reference consumer (the physical limit a consumer can reach on this machine).

use std::path::PathBuf;
use std::time::Duration;

use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, BasicQosArguments, Channel,
    QueueBindArguments, QueueDeclareArguments, QueueDeleteArguments,
};
use amqprs::connection::Connection;
use amqprs::BasicProperties;
use anyhow::{anyhow, bail, Context, Result};
use scmb_sim::bus::BusTarget;

/// An open connection with one channel.
pub struct Amqp {
    pub conn: Connection,
    pub ch: Channel,
}

impl Amqp {
    pub async fn open(target: &BusTarget) -> Result<Amqp> {
        let (conn, ch) = scmb_sim::testkit::open(target).await.map_err(|e| {
            anyhow!(
                "cannot connect to the broker on port {} with {}: {e}",
                target.port,
                target.cert.display()
            )
        })?;
        Ok(Amqp { conn, ch })
    }

    pub async fn close(self) {
        let _ = self.ch.close().await;
        let _ = self.conn.close().await;
    }

    /// A server-named queue bound to `scmb` with `scmb.alerts.#`; `exclusive` also makes it
    /// auto-delete, otherwise it outlives this connection (for another process to drain).
    pub async fn declare_bound_queue(&self, exclusive: bool) -> Result<String> {
        let args = if exclusive {
            QueueDeclareArguments::exclusive_server_named()
        } else {
            QueueDeclareArguments::new("")
                .durable(false)
                .exclusive(false)
                .auto_delete(false)
                .finish()
        };
        let (queue, _, _) = self
            .ch
            .queue_declare(args)
            .await
            .context("declaring a server-named queue")?
            .context("the broker did not name the queue")?;
        self.ch
            .queue_bind(QueueBindArguments::new(&queue, "scmb", "scmb.alerts.#"))
            .await
            .with_context(|| format!("binding {queue} to scmb"))?;
        Ok(queue)
    }

    /// Messages ready in `queue` (passive declare).
    pub async fn queue_len(&self, queue: &str) -> Result<u32> {
        let (_, n, _) = self
            .ch
            .queue_declare(QueueDeclareArguments::new(queue).passive(true).finish())
            .await
            .with_context(|| format!("passive declare of {queue}"))?
            .context("no answer to a passive declare")?;
        Ok(n)
    }

    /// Waits until `queue` holds `n` messages.
    pub async fn wait_len(&self, queue: &str, n: u32, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let have = self.queue_len(queue).await?;
            if have >= n {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{queue} holds {have} of the {n} messages published, {} s later",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn delete_queue(&self, queue: &str) -> Result<()> {
        self.ch
            .queue_delete(QueueDeleteArguments::new(queue))
            .await
            .with_context(|| format!("deleting {queue}"))?;
        Ok(())
    }

    /// Publishes one message to the `scmb` exchange.
    pub async fn publish(&self, key: String, body: Vec<u8>) -> Result<()> {
        let props = BasicProperties::default()
            .with_content_type("application/json")
            .finish();
        self.ch
            .basic_publish(props, body, BasicPublishArguments::new("scmb", &key))
            .await
            .context("publishing")
    }
}

/// The no-op reference consumer: the subcommand `scmb-bench noop-consumer`, run as a child so
/// that its CPU time and RSS are measured like the tools'. Consumes `count` messages with
/// prefetch `prefetch`, acks with `multiple` every `ack_every`, parses nothing.
#[derive(clap::Args, Debug, Clone)]
pub struct NoopArgs {
    #[arg(long, default_value = "localhost")]
    pub host: String,
    #[arg(long)]
    pub port: u16,
    #[arg(long)]
    pub ca: PathBuf,
    #[arg(long)]
    pub cert: PathBuf,
    #[arg(long)]
    pub key: PathBuf,
    #[arg(long)]
    pub queue: String,
    #[arg(long)]
    pub count: u64,
    #[arg(long, default_value_t = 2000)]
    pub prefetch: u16,
    #[arg(long, default_value_t = 500)]
    pub ack_every: u64,
}

pub async fn noop_consumer(a: NoopArgs) -> Result<()> {
    let target = BusTarget {
        host: a.host.clone(),
        port: a.port,
        ca: a.ca.clone(),
        cert: a.cert.clone(),
        key: a.key.clone(),
    };
    let amqp = Amqp::open(&target).await?;
    amqp.ch
        .basic_qos(BasicQosArguments::new(0, a.prefetch, false))
        .await
        .context("basic.qos")?;
    let args = BasicConsumeArguments::new(&a.queue, "")
        .manual_ack(true)
        .finish();
    let (_, mut rx) = amqp
        .ch
        .basic_consume_rx(args)
        .await
        .with_context(|| format!("consuming {}", a.queue))?;
    let ack_every = a.ack_every.max(1);
    let mut n = 0u64;
    let mut unacked = 0u64;
    let mut last_tag = 0u64;
    while n < a.count {
        let msg = rx
            .recv()
            .await
            .with_context(|| format!("the broker closed the consumer after {n} messages"))?;
        let Some(d) = msg.deliver else { continue };
        last_tag = d.delivery_tag();
        n += 1;
        unacked += 1;
        if unacked == ack_every {
            amqp.ch
                .basic_ack(BasicAckArguments::new(last_tag, true))
                .await
                .context("basic.ack")?;
            unacked = 0;
        }
    }
    if unacked > 0 {
        amqp.ch
            .basic_ack(BasicAckArguments::new(last_tag, true))
            .await
            .context("basic.ack")?;
    }
    amqp.close().await;
    Ok(())
}
