/**
 * Counters, gauges and histograms, and their Prometheus text exposition
 * (version 0.0.4). Pure: the HTTP endpoint lives in main.ts.
 *
 * @module
 */

type Labels = Record<string, string>;

function key(labels: Labels): string {
  return Object.keys(labels).sort().map((name) => `${name}="${escape(labels[name])}"`).join(",");
}

function escape(value: string): string {
  return value.replaceAll("\\", "\\\\").replaceAll("\n", "\\n").replaceAll('"', '\\"');
}

/** A monotonically increasing count, optionally by labels. */
export class Counter {
  readonly #values = new Map<string, number>();
  /** Creates a counter; `name` should end in `_total`. */
  constructor(readonly name: string, readonly help: string) {}
  /** Adds `by` (default 1) to the series with `labels`. */
  inc(labels: Labels = {}, by = 1): void {
    const k = key(labels);
    this.#values.set(k, (this.#values.get(k) ?? 0) + by);
  }
  /** The exposition lines. */
  render(): string {
    let text = `# HELP ${this.name} ${this.help}\n# TYPE ${this.name} counter\n`;
    if (this.#values.size === 0) text += `${this.name} 0\n`;
    for (const [k, v] of this.#values) text += `${this.name}${k ? `{${k}}` : ""} ${v}\n`;
    return text;
  }
}

/** A value that goes up and down. */
export class Gauge {
  #value = 0;
  /** Creates a gauge. */
  constructor(readonly name: string, readonly help: string) {}
  /** Adds `by` (may be negative). */
  add(by: number): void {
    this.#value += by;
  }
  /** The exposition lines. */
  render(): string {
    return `# HELP ${this.name} ${this.help}\n# TYPE ${this.name} gauge\n${this.name} ${this.#value}\n`;
  }
}

/** A value read when scraped, e.g. from the hook queue or the certificate. */
export class Sampled {
  /** Creates the gauge; `read` returns undefined when there is nothing to report. */
  constructor(
    readonly name: string,
    readonly help: string,
    readonly read: () => number | undefined,
    readonly labels: Labels = {},
  ) {}
  /** The exposition lines. */
  render(): string {
    const value = this.read();
    const k = key(this.labels);
    return `# HELP ${this.name} ${this.help}\n# TYPE ${this.name} gauge\n` +
      (value === undefined ? "" : `${this.name}${k ? `{${k}}` : ""} ${value}\n`);
  }
}

/** Observations counted into cumulative buckets. */
export class Histogram {
  readonly #counts: number[];
  #sum = 0;
  #count = 0;
  /** Creates a histogram with upper bounds `buckets` (ascending). */
  constructor(readonly name: string, readonly help: string, readonly buckets: readonly number[]) {
    this.#counts = new Array(buckets.length).fill(0);
  }
  /** Records one value. */
  observe(value: number): void {
    for (let i = 0; i < this.buckets.length; i++) if (value <= this.buckets[i]) this.#counts[i]++;
    this.#sum += value;
    this.#count++;
  }
  /** The exposition lines. */
  render(): string {
    let text = `# HELP ${this.name} ${this.help}\n# TYPE ${this.name} histogram\n`;
    this.buckets.forEach((bound, i) =>
      text += `${this.name}_bucket{le="${bound}"} ${this.#counts[i]}\n`
    );
    text +=
      `${this.name}_bucket{le="+Inf"} ${this.#count}\n${this.name}_sum ${this.#sum}\n${this.name}_count ${this.#count}\n`;
    return text;
  }
}

/** Every metric Letterbox exports. */
export class Metrics {
  readonly connectionsOpen = new Gauge("letterbox_connections_open", "SMTP connections open now.");
  readonly connections = new Counter(
    "letterbox_connections_total",
    "SMTP connections accepted, by outcome.",
  );
  readonly acceptErrors = new Counter(
    "letterbox_accept_errors_total",
    "accept() failures: connection (a client reset before accept; skipped) or resources (backed off).",
  );
  readonly tlsHandshakes = new Counter(
    "letterbox_tls_handshakes_total",
    "TLS handshakes, by result.",
  );
  readonly messages = new Counter(
    "letterbox_messages_total",
    "Messages at the end of DATA, by reply code.",
  );
  readonly rejectedCommands = new Counter(
    "letterbox_rejected_commands_total",
    "Commands refused, by reply code.",
  );
  readonly receivedBytes = new Counter(
    "letterbox_received_bytes_total",
    "Message octets received in DATA.",
  );
  readonly deliverySeconds = new Histogram(
    "letterbox_delivery_seconds",
    "From the end of DATA to the reply: storing and syncing every copy.",
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  );
  readonly authentication = new Counter(
    "letterbox_authentication_results_total",
    "Sender authentication results, by method (spf, dkim, dmarc, arc) and result.",
  );
  readonly rspamdActions = new Counter(
    "letterbox_rspamd_actions_total",
    "rspamd's action for each message (unchecked: too large, or rspamd failed).",
  );
  readonly lmtpReplies = new Counter(
    "letterbox_lmtp_replies_total",
    "The LMTP server's replies to RCPT and after the data, one per recipient, by code.",
  );
  readonly earlyTalkers = new Counter(
    "letterbox_early_talkers_total",
    "Clients that talked before the greeting (--greet-delay) and were closed.",
  );
  readonly timeouts = new Counter(
    "letterbox_timeouts_total",
    "Connections closed with 421 4.4.2 for waiting too long, by phase.",
  );
  readonly hookJobs = new Counter(
    "letterbox_hook_jobs_total",
    "Hook jobs, by what happened: queued, delivered, retried, failed (gave up).",
  );
  readonly hookJobsPending = new Sampled(
    "letterbox_hook_jobs_pending",
    "Hook jobs in the spool waiting or running.",
    () => this.sources.hookJobsPending?.(),
  );
  readonly certificateExpiry = new Sampled(
    "letterbox_tls_certificate_expiry_timestamp_seconds",
    "When the TLS certificate in force expires (Unix time).",
    () => this.sources.certificateExpiry?.(),
  );
  readonly buildInfo: Sampled;
  /** Where sampled gauges read from, filled in by the application. */
  readonly sources: {
    hookJobsPending?: () => number;
    certificateExpiry?: () => number | undefined;
  } = {};

  /** Creates the metrics; `build` labels letterbox_build_info. */
  constructor(build: { version: string; deno: string } = { version: "", deno: "" }) {
    this.buildInfo = new Sampled(
      "letterbox_build_info",
      "Always 1; the labels name the build.",
      () => 1,
      build,
    );
  }

  readonly recipientsPerMessage = new Histogram(
    "letterbox_recipients_per_message",
    "Accepted recipients of each message that reached the end of DATA.",
    [1, 2, 5, 10, 20, 50, 100],
  );

  /** The whole exposition. */
  render(): string {
    return [
      this.connectionsOpen,
      this.connections,
      this.acceptErrors,
      this.tlsHandshakes,
      this.messages,
      this.rejectedCommands,
      this.receivedBytes,
      this.deliverySeconds,
      this.recipientsPerMessage,
      this.authentication,
      this.rspamdActions,
      this.lmtpReplies,
      this.earlyTalkers,
      this.timeouts,
      this.hookJobs,
      this.hookJobsPending,
      this.certificateExpiry,
      this.buildInfo,
    ].map((metric) => metric.render()).join("");
  }
}
