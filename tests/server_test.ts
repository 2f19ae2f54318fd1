import { isConnectionError, listenAdvice } from "../src/net/server.ts";
import { assert, assertStringIncludes } from "./_assert.ts";

Deno.test("listenAdvice() says what to do for a privileged port, a taken one, and the sandbox", () => {
  // Root binds port 25 here, so the refusal an unprivileged user gets is built by hand.
  assertStringIncludes(
    listenAdvice(new Deno.errors.PermissionDenied("Permission denied (os error 13)"), 25),
    "ports below 1024 need CAP_NET_BIND_SERVICE; run it as deploy/letterbox.service does",
  );
  assertStringIncludes(
    listenAdvice(new Deno.errors.AddrInUse("Address in use"), 25),
    "ss -ltnp 'sport = :25'",
  );
  assertStringIncludes(
    listenAdvice(new Deno.errors.NotCapable("Requires net access"), 25),
    "LISTEN_HOSTS",
  );
});

Deno.test("isConnectionError() tells one client's failure from the listener's", () => {
  assert(isConnectionError(new Deno.errors.NotConnected("os error 107")));
  assert(isConnectionError(new Deno.errors.ConnectionAborted("aborted")));
  assert(isConnectionError(Object.assign(new Error("proto"), { code: "EPROTO" })));
  assert(!isConnectionError(Object.assign(new Error("Too many open files"), { code: "EMFILE" })));
});
