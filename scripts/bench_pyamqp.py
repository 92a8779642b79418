#!/usr/bin/env python3
"""The py-amqp reference consumer of scmb-bench: what HPE's SCMB sample (scmb.py) does per message.

Connects over TLS with the appliance CA and the client certificate/key, authenticates with SASL
EXTERNAL, consumes an existing queue (no prefetch limit, like the sample), and for every message:
json.loads the body, applies the sample's filter (changeType Created, resource.alertState Active,
resource.severity Critical), prints the sample's fields, and acks it. Exits after --count printed
messages. Started by `scmb-bench` (crates/bench); not meant to be run by hand, though it can be:

  scripts/bench_pyamqp.py --host 127.0.0.1 --port 5671 --ca caroot.pem --cert client.pem \
      --key key.pem --queue amq.gen-... --count 20000
"""

import argparse
import json
import ssl
import sys
from datetime import datetime

import amqp


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5671)
    p.add_argument("--server-name", default="localhost")
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--queue", required=True)
    p.add_argument("--count", type=int, required=True)
    args = p.parse_args()

    conn = amqp.Connection(
        host="%s:%d" % (args.host, args.port),
        login_method="EXTERNAL",
        ssl={
            "ca_certs": args.ca,
            "certfile": args.cert,
            "keyfile": args.key,
            "cert_reqs": ssl.CERT_REQUIRED,
            "server_hostname": args.server_name,
        },
    )
    conn.connect()
    ch = conn.channel()
    printed = 0

    def callback(msg):
        nonlocal printed
        body = json.loads(msg.body)
        resource = body["resource"]
        if (
            body["changeType"] == "Created"
            and resource["alertState"] == "Active"
            and resource["severity"] == "Critical"
        ):
            ts = datetime.strptime(body["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
            assoc = resource.get("associatedResource") or {}
            print("")
            print("ChangeType:", body["changeType"])
            print("Data:", body["data"])
            print("eTag:", body["eTag"])
            print("newState:", body["newState"])
            print("resourceUri:", body["resourceUri"])
            print("resource:")
            print("    alertState:", resource["alertState"])
            print("    alertTypeID:", resource["alertTypeID"])
            print("    description:", resource["description"])
            print("    changeLog:", resource["changeLog"])
            print("    severity:", resource["severity"])
            print("    resourceName:", assoc.get("resourceName"))
            print("    resourceCategory:", assoc.get("resourceCategory"))
            print("    uri:", resource["uri"])
            print("timestamp:", ts.strftime("%Y-%m-%d %H:%M:%S"))
            printed += 1
        ch.basic_ack(msg.delivery_tag)

    ch.basic_consume(queue=args.queue, no_ack=False, callback=callback)
    while printed < args.count:
        conn.drain_events()
    sys.stdout.flush()
    ch.close()
    conn.close()


if __name__ == "__main__":
    main()
