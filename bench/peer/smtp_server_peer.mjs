// The peer to beat (issue 17): nodemailer's smtp-server on Node with a durable
// Maildir handler, exactly the steps a 250 must follow: stream into tmp/,
// fsync, rename into new/, fsync new/, then the callback. Any error unlinks
// the tmp file and answers 451.
//
// Usage: node bench/peer/smtp_server_peer.mjs MAILDIR [CERT KEY]   (prints "listening PORT")
// With a certificate and key it offers STARTTLS, as Letterbox does.
import { SMTPServer } from "smtp-server";
import fs from "node:fs/promises";

const [maildir, certFile, keyFile] = process.argv.slice(2);
const tls = certFile && keyFile
  ? { cert: await fs.readFile(certFile), key: await fs.readFile(keyFile) }
  : undefined;
await fs.mkdir(`${maildir}/tmp`, { recursive: true });
await fs.mkdir(`${maildir}/new`, { recursive: true });
const newDir = await fs.open(`${maildir}/new`, "r");
let sequence = 0;

const server = new SMTPServer({
  disableReverseLookup: true,
  authOptional: true,
  disabledCommands: tls ? ["AUTH"] : ["AUTH", "STARTTLS"],
  hideSTARTTLS: !tls,
  ...tls,
  logger: false,
  size: 256 * 1024 * 1024,
  maxClients: 20000,
  // Its default waits before the greeting; the load client opens sessions before the clock.
  onConnect(_session, callback) {
    callback();
  },
  async onData(stream, _session, callback) {
    const name = `${Date.now()}.${process.pid}_${sequence++}.peer`;
    const tmp = `${maildir}/tmp/${name}`;
    let file;
    try {
      file = await fs.open(tmp, "wx");
      for await (const chunk of stream) await file.write(chunk);
      await file.sync();
      await file.close();
      file = undefined;
      await fs.rename(tmp, `${maildir}/new/${name}`);
      await newDir.sync();
      callback();
    } catch (error) {
      await file?.close().catch(() => {});
      await fs.unlink(tmp).catch(() => {});
      stream.resume();
      const failure = new Error("Error: local error in processing");
      failure.responseCode = 451;
      callback(failure);
      void error;
    }
  },
});
server.listen(0, "127.0.0.1", () => {
  console.log(`listening ${server.server.address().port}`);
});
