//! A minimal AMQP 0-9-1 client over TLS with SASL EXTERNAL, for the one thing `amqprs` cannot
//! do: routing keys that are not UTF-8. `amqprs` holds routing keys as `String`, so it can
//! neither publish such a key nor decode a delivery that carries one; the protocol itself
//! allows any bytes in a short string. This speaks just enough of it: open a connection and
//! one channel, publish with publisher confirms, declare and bind a server-named queue,
//! consume without acks, close.
//!
//! Used by `POST /sim/publish` for a routing key that is not UTF-8 (as the simulator's admin
//! identity) and by tests to read such messages back (as the appliance's CN `default` client).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::bus::BusTarget;

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// The one channel this client opens.
const CH: u16 = 1;
/// Class ids of AMQP 0-9-1.
const CONNECTION: u16 = 10;
const CHANNEL: u16 = 20;
const QUEUE: u16 = 50;
const BASIC: u16 = 60;
const CONFIRM: u16 = 85;

/// A message read back: routing key and body as raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub exchange: Vec<u8>,
    pub routing_key: Vec<u8>,
    pub body: Vec<u8>,
}

/// Writes AMQP field types.
#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn method(class: u16, method: u16) -> Enc {
        let mut e = Enc::default();
        e.u16(class).u16(method);
        e
    }
    fn u8(&mut self, v: u8) -> &mut Enc {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Enc {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Enc {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Enc {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A short string: any bytes, at most 255 (checked by the callers that take user input).
    fn short(&mut self, s: &[u8]) -> &mut Enc {
        self.0.push(s.len().min(255) as u8);
        self.0.extend_from_slice(&s[..s.len().min(255)]);
        self
    }
    fn long(&mut self, s: &[u8]) -> &mut Enc {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s);
        self
    }
    /// A field table of string values.
    fn table(&mut self, entries: &[(&str, &str)]) -> &mut Enc {
        let mut t = Enc::default();
        for (k, v) in entries {
            t.short(k.as_bytes()).u8(b'S').long(v.as_bytes());
        }
        self.long(&t.0)
    }
}

/// Reads AMQP field types.
struct Dec<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self
            .b
            .get(self.pos..self.pos + n)
            .ok_or("AMQP frame shorter than its fields")?;
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn short(&mut self) -> Result<&'a [u8], String> {
        let n = self.u8()? as usize;
        self.take(n)
    }
    fn long(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// One connection with one open channel.
pub struct RawConnection {
    stream: TlsStream<TcpStream>,
    frame_max: u32,
    confirming: bool,
    next_publish_tag: u64,
}

impl RawConnection {
    /// Connects to `target` with its client certificate, authenticates with SASL EXTERNAL (the
    /// certificate's CN is the user) and opens channel 1.
    pub async fn open(target: &BusTarget) -> Result<RawConnection, String> {
        let cfg = crate::bus::tls_client_config(target)?;
        let name = rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| format!("{}: {e}", target.host))?;
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            TcpStream::connect((target.host.as_str(), target.port)),
        )
        .await
        .map_err(|_| format!("{}:{}: connect timed out", target.host, target.port))?
        .map_err(|e| format!("{}:{}: {e}", target.host, target.port))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {}:{}: {e}", target.host, target.port))?;
        let mut c = RawConnection {
            stream,
            frame_max: 131_072,
            confirming: false,
            next_publish_tag: 1,
        };
        tokio::time::timeout(Duration::from_secs(10), c.handshake())
            .await
            .map_err(|_| "the AMQP handshake timed out".to_string())??;
        Ok(c)
    }

    async fn handshake(&mut self) -> Result<(), String> {
        self.stream
            .write_all(b"AMQP\x00\x00\x09\x01")
            .await
            .map_err(io_err)?;
        let start = self.expect(0, CONNECTION, 10).await?;
        let mut d = Dec { b: &start, pos: 0 };
        let _version = (d.u8()?, d.u8()?);
        let _server_properties = d.long()?;
        let mechanisms = String::from_utf8_lossy(d.long()?).to_string();
        if !mechanisms.split(' ').any(|m| m == "EXTERNAL") {
            return Err(format!(
                "the broker does not offer SASL EXTERNAL (it offers {mechanisms:?})"
            ));
        }
        let mut ok = Enc::method(CONNECTION, 11);
        ok.table(&[
            ("product", "ov-sim raw publisher"),
            ("connection_name", "ov-sim-raw"),
        ])
        .short(b"EXTERNAL")
        .long(b"")
        .short(b"en_US");
        self.send_method(0, ok).await?;
        let tune = self.expect(0, CONNECTION, 30).await?;
        let mut d = Dec { b: &tune, pos: 0 };
        let channel_max = d.u16()?;
        let frame_max = d.u32()?;
        if frame_max != 0 {
            self.frame_max = self.frame_max.min(frame_max);
        }
        // No heartbeats: connections here are short-lived.
        let mut tune_ok = Enc::method(CONNECTION, 31);
        tune_ok.u16(channel_max).u32(self.frame_max).u16(0);
        self.send_method(0, tune_ok).await?;
        let mut open = Enc::method(CONNECTION, 40);
        open.short(b"/").short(b"").u8(0);
        self.send_method(0, open).await?;
        self.expect(0, CONNECTION, 41).await?;
        let mut ch = Enc::method(CHANNEL, 10);
        ch.short(b"");
        self.send_method(CH, ch).await?;
        self.expect(CH, CHANNEL, 11).await?;
        Ok(())
    }

    /// Publishes `body` to `exchange` with `routing_key` (any bytes, at most 255) and waits for
    /// the broker's confirm.
    pub async fn publish(
        &mut self,
        exchange: &str,
        routing_key: &[u8],
        body: &[u8],
    ) -> Result<(), String> {
        if routing_key.len() > 255 {
            return Err(format!(
                "a routing key has at most 255 bytes, this one {}",
                routing_key.len()
            ));
        }
        if !self.confirming {
            let mut select = Enc::method(CONFIRM, 10);
            select.u8(0);
            self.send_method(CH, select).await?;
            self.expect(CH, CONFIRM, 11).await?;
            self.confirming = true;
        }
        let mut publish = Enc::method(BASIC, 40);
        publish
            .u16(0)
            .short(exchange.as_bytes())
            .short(routing_key)
            .u8(0);
        self.send_method(CH, publish).await?;
        // Content header: class, weight, size, then content-type and delivery-mode (1,
        // transient) like the simulator's other messages.
        let mut header = Enc::default();
        header
            .u16(BASIC)
            .u16(0)
            .u64(body.len() as u64)
            .u16(0x8000 | 0x1000)
            .short(b"application/json")
            .u8(1);
        self.send_frame(FRAME_HEADER, CH, &header.0).await?;
        let chunk = (self.frame_max as usize).saturating_sub(8).max(1);
        for part in body.chunks(chunk) {
            self.send_frame(FRAME_BODY, CH, part).await?;
        }
        let tag = self.next_publish_tag;
        self.next_publish_tag += 1;
        loop {
            let (class, method, args) = self.method_on(CH).await?;
            let mut d = Dec { b: &args, pos: 0 };
            match (class, method) {
                (BASIC, 80) | (BASIC, 120) => {
                    let acked = d.u64()?;
                    let multiple = d.u8()? & 1 == 1;
                    if acked == tag || (multiple && acked >= tag) {
                        return if method == 80 {
                            Ok(())
                        } else {
                            Err("the broker refused the message (basic.nack)".into())
                        };
                    }
                }
                _ => {}
            }
        }
    }

    /// Declares a server-named, exclusive, auto-delete queue, binds it to `exchange` with every
    /// key of `bindings` and consumes from it without acks. Returns the queue's name.
    pub async fn consume(&mut self, exchange: &str, bindings: &[&[u8]]) -> Result<String, String> {
        let mut declare = Enc::method(QUEUE, 10);
        // passive 0, durable 0, exclusive 1, auto-delete 1, no-wait 0
        declare.u16(0).short(b"").u8(0b0000_1100).table(&[]);
        self.send_method(CH, declare).await?;
        let ok = self.expect(CH, QUEUE, 11).await?;
        let queue = Dec { b: &ok, pos: 0 }.short()?.to_vec();
        for key in bindings {
            let mut bind = Enc::method(QUEUE, 20);
            bind.u16(0)
                .short(&queue)
                .short(exchange.as_bytes())
                .short(key)
                .u8(0)
                .table(&[]);
            self.send_method(CH, bind).await?;
            self.expect(CH, QUEUE, 21).await?;
        }
        let mut consume = Enc::method(BASIC, 20);
        // no-local 0, no-ack 1, exclusive 0, no-wait 0
        consume
            .u16(0)
            .short(&queue)
            .short(b"")
            .u8(0b0000_0010)
            .table(&[]);
        self.send_method(CH, consume).await?;
        self.expect(CH, BASIC, 21).await?;
        Ok(String::from_utf8_lossy(&queue).into_owned())
    }

    /// The next message delivered to the consumer, or `None` after `timeout`.
    pub async fn next_delivery(&mut self, timeout: Duration) -> Result<Option<Delivery>, String> {
        match tokio::time::timeout(timeout, self.read_delivery()).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    async fn read_delivery(&mut self) -> Result<Delivery, String> {
        let args = loop {
            let (class, method, args) = self.method_on(CH).await?;
            if (class, method) == (BASIC, 60) {
                break args;
            }
        };
        let mut d = Dec { b: &args, pos: 0 };
        let _consumer_tag = d.short()?;
        let _delivery_tag = d.u64()?;
        let _redelivered = d.u8()?;
        let exchange = d.short()?.to_vec();
        let routing_key = d.short()?.to_vec();
        let (kind, _, header) = self.frame().await?;
        if kind != FRAME_HEADER {
            return Err(format!("expected a content header, got frame type {kind}"));
        }
        let mut h = Dec { b: &header, pos: 0 };
        let _class = h.u16()?;
        let _weight = h.u16()?;
        let size = h.u64()? as usize;
        let mut body = Vec::with_capacity(size);
        while body.len() < size {
            let (kind, _, part) = self.frame().await?;
            if kind != FRAME_BODY {
                return Err(format!("expected a body frame, got frame type {kind}"));
            }
            body.extend_from_slice(&part);
        }
        Ok(Delivery {
            exchange,
            routing_key,
            body,
        })
    }

    /// Closes the connection politely (errors are ignored: the socket goes anyway).
    pub async fn close(mut self) {
        let mut close = Enc::method(CONNECTION, 50);
        close.u16(200).short(b"bye").u16(0).u16(0);
        if self.send_method(0, close).await.is_ok() {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), self.expect(0, CONNECTION, 51)).await;
        }
        let _ = self.stream.shutdown().await;
    }

    async fn send_frame(&mut self, kind: u8, channel: u16, payload: &[u8]) -> Result<(), String> {
        let mut f = Vec::with_capacity(payload.len() + 8);
        f.push(kind);
        f.extend_from_slice(&channel.to_be_bytes());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f.push(FRAME_END);
        self.stream.write_all(&f).await.map_err(io_err)
    }

    async fn send_method(&mut self, channel: u16, m: Enc) -> Result<(), String> {
        self.send_frame(FRAME_METHOD, channel, &m.0).await
    }

    /// The next frame other than a heartbeat: type, channel, payload.
    async fn frame(&mut self) -> Result<(u8, u16, Vec<u8>), String> {
        loop {
            let mut head = [0u8; 7];
            self.stream.read_exact(&mut head).await.map_err(io_err)?;
            let kind = head[0];
            let channel = u16::from_be_bytes([head[1], head[2]]);
            let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
            if size > 64 << 20 {
                return Err(format!("an AMQP frame of {size} bytes: not a sane broker"));
            }
            let mut payload = vec![0u8; size + 1];
            self.stream.read_exact(&mut payload).await.map_err(io_err)?;
            if payload.pop() != Some(FRAME_END) {
                return Err("an AMQP frame without its end marker".into());
            }
            if kind != FRAME_HEARTBEAT {
                return Ok((kind, channel, payload));
            }
        }
    }

    /// The next method frame on `channel`; a close of the connection or the channel by the
    /// broker becomes an error with its reply text.
    async fn method_on(&mut self, channel: u16) -> Result<(u16, u16, Vec<u8>), String> {
        loop {
            let (kind, ch, payload) = self.frame().await?;
            if kind != FRAME_METHOD {
                continue;
            }
            let mut d = Dec {
                b: &payload,
                pos: 0,
            };
            let (class, method) = (d.u16()?, d.u16()?);
            if (class, method) == (CONNECTION, 50) || (class, method) == (CHANNEL, 40) {
                let code = d.u16()?;
                let text = String::from_utf8_lossy(d.short()?).to_string();
                let what = if class == CONNECTION {
                    "connection"
                } else {
                    "channel"
                };
                return Err(format!("the broker closed the {what}: {code} {text}"));
            }
            if ch == channel {
                return Ok((class, method, payload[4..].to_vec()));
            }
        }
    }

    /// The arguments of the next method on `channel`, which must be `class.method`.
    async fn expect(&mut self, channel: u16, class: u16, method: u16) -> Result<Vec<u8>, String> {
        let (c, m, args) = self.method_on(channel).await?;
        if (c, m) != (class, method) {
            return Err(format!(
                "expected AMQP method {class}.{method}, the broker sent {c}.{m}"
            ));
        }
        Ok(args)
    }
}

fn io_err(e: std::io::Error) -> String {
    format!("AMQP connection: {e}")
}

/// The bytes of one `application/x-www-form-urlencoded` value: `%XX` escapes decoded to any
/// byte (not only UTF-8), `+` a space. A `%` without two hex digits stays itself.
pub fn form_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16)).map(|d| d as u8);
    while i < b.len() {
        match (b[i], hex(b.get(i + 1)), hex(b.get(i + 2))) {
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The pairs of a query string, each value as raw bytes (see [`form_decode`]).
pub fn query_bytes(q: &str) -> Vec<(String, Vec<u8>)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                String::from_utf8_lossy(&form_decode(k)).into_owned(),
                form_decode(v),
            )
        })
        .collect()
}

/// Bytes from hex text (`ff00` or `FF00`), or the reason it is not hex.
pub fn from_hex(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return Err(format!("{s:?}: an odd number of hex digits"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(s.get(i..i + 2).unwrap_or("zz"), 16)
                .map_err(|_| format!("{s:?}: not hex"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_key_bytes_come_from_hex_or_form_escapes() {
        assert_eq!(from_hex("ff00Ab").expect("hex"), vec![0xff, 0x00, 0xab]);
        assert!(from_hex("f").is_err());
        assert!(from_hex("zz").is_err());
        assert!(from_hex("é1").is_err());
        assert_eq!(form_decode("a%FFb%2e%"), b"a\xffb.%".to_vec());
        assert_eq!(form_decode("x+y%2B"), b"x y+".to_vec());
        assert_eq!(
            query_bytes("routingKey=scmb.%FF&exchange=scmb&&flag"),
            vec![
                ("routingKey".to_string(), b"scmb.\xff".to_vec()),
                ("exchange".to_string(), b"scmb".to_vec()),
                ("flag".to_string(), vec![]),
            ]
        );
    }

    #[test]
    fn short_strings_carry_any_bytes() {
        let mut e = Enc::default();
        e.short(b"\xff\xfe.x").long(b"ab").table(&[("k", "v")]);
        let mut d = Dec { b: &e.0, pos: 0 };
        assert_eq!(d.short().expect("short"), b"\xff\xfe.x");
        assert_eq!(d.long().expect("long"), b"ab");
        assert_eq!(d.long().expect("table"), b"\x01kS\x00\x00\x00\x01v");
        assert!(d.u8().is_err(), "nothing left");
    }
}
