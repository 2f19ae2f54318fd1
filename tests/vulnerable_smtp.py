"""A deliberately vulnerable SMTP server for tests/check_test.ts.

DATA ends at a bare "\\n.\\n" as well as at "\\r\\n.\\r\\n" (SMTP smuggling),
and what was buffered with STARTTLS is executed inside TLS (STARTTLS command
injection, CVE-2011-0411). Prints its port, serves until killed.
"""
import re, socket, socketserver, ssl, sys

CERT, KEY = sys.argv[1], sys.argv[2]
END = re.compile(rb"\r?\n\.\r?\n")  # the first bug: a bare LF ends DATA


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        conn, buffer, in_data, secure = self.request, b"", False, False

        def say(text):
            conn.sendall(text.encode() + b"\r\n")

        say("220 vuln.test ESMTP")
        while True:
            if in_data:
                end = END.search(buffer)
                if end:
                    buffer, in_data = buffer[end.end():], False
                    say("250 2.0.0 Ok: queued")
                    continue
            elif b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                verb = line.rstrip(b"\r").split(b" ")[0].upper()
                if verb == b"EHLO":
                    say("250-vuln.test\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 "
                        + ("8BITMIME" if secure else "STARTTLS"))
                elif verb == b"STARTTLS" and not secure:
                    say("220 2.0.0 Ready")
                    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                    context.load_cert_chain(CERT, KEY)
                    conn = context.wrap_socket(conn, server_side=True)
                    secure = True  # the second bug: `buffer` is kept
                elif verb == b"STARTTLS":
                    say("503 5.5.1 TLS already active")
                elif verb == b"DATA":
                    in_data = True
                    say("354 go ahead")
                elif verb == b"QUIT":
                    say("221 2.0.0 Bye")
                    return
                elif verb in (b"MAIL", b"RCPT", b"NOOP", b"RSET"):
                    say("250 2.0.0 Ok")
                else:
                    say("500 5.5.2 Unknown")
                continue
            try:
                data = conn.recv(65536)
            except (OSError, ssl.SSLError):
                return
            if not data:
                return
            buffer += data


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


with Server(("127.0.0.1", 0), Handler) as server:
    print(server.server_address[1], flush=True)
    server.serve_forever()
