# Thin wrapper over deno.json's tasks. Installs Deno 2.9.6 from npm into
# .tools/ when no deno is on PATH (the npm registry is what we can reach).

DENO_VERSION := 2.9.6
DENO := $(shell command -v deno 2>/dev/null || echo $(CURDIR)/.tools/node_modules/.bin/deno)
export PATH := $(CURDIR)/.tools/node_modules/.bin:$(PATH)
# Trust the system's certificate store as well as the built-in ones, so that
# npm and Deno reach the registry on networks that inspect TLS with their own
# CA (the case on our CI machines; harmless elsewhere).
export DENO_TLS_CA_STORE ?= mozilla,system
SYSTEM_CA_BUNDLE := /etc/ssl/certs/ca-certificates.crt
ifneq ($(wildcard $(SYSTEM_CA_BUNDLE)),)
export NODE_EXTRA_CA_CERTS ?= $(SYSTEM_CA_BUNDLE)
endif

# The permissions baked into dist/letterbox: listening on LISTEN_HOSTS, the
# Maildir root and the certificate folder, the environment and the host name
# and user id, nothing else. The whole environment, not LETTERBOX_* alone:
# Deno lists variable names only with access to all of them, and Letterbox
# lists them to refuse a misspelt LETTERBOX_ variable, which would otherwise
# do nothing at all; only LETTERBOX_ values are ever read.
# Override for your layout, e.g. make build MAIL_ROOT=/srv/mail.
MAIL_ROOT ?= /var/vmail
# The addresses the binary may listen on; it makes no outgoing connections
# except to HOOK_HOSTS (webhook hosts, e.g. ci.example.com:443), and runs no
# program except HOOK_COMMANDS (exec: hooks, e.g. /usr/local/bin/on-mail).
LISTEN_HOSTS ?= 0.0.0.0,[::],127.0.0.1,[::1]
HOOK_HOSTS ?=
# The DNS servers sender authentication asks (--dns-server, or the system's
# resolvers): by default those in this machine's /etc/resolv.conf. For the
# binary, name the server of the machine it will run on, best a local caching
# resolver: make build DNS_SERVERS=127.0.0.1:53.
DNS_SERVERS ?= $(shell awk '$$1 == "nameserver" { print ($$2 ~ /:/ ? "[" $$2 "]" : $$2) ":53" }' /etc/resolv.conf 2>/dev/null | paste -sd, -)
# The LMTP server when not on loopback (LMTP_HOSTS=10.0.0.7:24), or its Unix
# socket (LMTP_SOCKETS=/run/dovecot/lmtp).
LMTP_HOSTS ?=
LMTP_SOCKETS ?=
# rspamd's worker when it is not on loopback, e.g. RSPAMD_HOSTS=10.0.0.5:11333.
RSPAMD_HOSTS ?=
# Hosts `letterbox check` may probe from the binary, e.g. CHECK_HOSTS=mx.example.com:25,mx.example.com:465.
CHECK_HOSTS ?=
HOOK_COMMANDS ?=
COMMA := ,
CERT_DIR ?= /etc/letterbox
# V8's young generation capped at 4 MiB a semi-space (the default grows to
# 16): measured with make bench at 64 connections x 1 KiB, peak RSS 115 -> 92
# MiB with the same throughput. The old generation capped at 1 GiB: V8 sizes
# its heap from the machine's memory, and on a large one it let garbage grow
# to four times the live heap before collecting (64 x 1 KiB on ext4, 8
# alternating rounds: peak RSS 128 -> 100 MiB, msg/s within noise). A small
# VPS gets about that limit by default. Baked into the binary like the permissions.
V8_FLAGS = --v8-flags=--max-semi-space-size=4,--max-old-space-size=1024
RUN_PERMISSIONS = --allow-net=127.0.0.1$(if $(DNS_SERVERS),$(COMMA)$(DNS_SERVERS)) --allow-read=./Maildir --allow-write=./Maildir \
	--allow-env --allow-sys=hostname,uid
BUILD_PERMISSIONS = --allow-net=$(LISTEN_HOSTS)$(if $(DNS_SERVERS),$(COMMA)$(DNS_SERVERS))$(if $(HOOK_HOSTS),$(COMMA)$(HOOK_HOSTS))$(if $(RSPAMD_HOSTS),$(COMMA)$(RSPAMD_HOSTS))$(if $(LMTP_HOSTS),$(COMMA)$(LMTP_HOSTS))$(if $(CHECK_HOSTS),$(COMMA)$(CHECK_HOSTS)) \
	$(if $(HOOK_COMMANDS),--allow-run=$(HOOK_COMMANDS)) --allow-read=$(MAIL_ROOT),$(CERT_DIR)$(if $(HOOK_COMMANDS),$(COMMA)$(HOOK_COMMANDS))$(if $(LMTP_SOCKETS),$(COMMA)$(LMTP_SOCKETS)) --allow-write=$(MAIL_ROOT)$(if $(LMTP_SOCKETS),$(COMMA)$(LMTP_SOCKETS)) \
	--allow-env --allow-sys=hostname,uid

# The real peers the tests use, from Debian. Installed only when missing, and
# only where we may (root with apt-get); otherwise the list is printed.
DEBIAN_PACKAGES = dnsmasq-base rspamd dovecot-imapd dovecot-lmtpd dovecot-sieve dovecot-submissiond python3-aiosmtpd swaks libnet-ssleay-perl libio-socket-ssl-perl openssl python3 postfix strace
PEERS = /usr/sbin/dnsmasq /usr/bin/rspamd /usr/sbin/dovecot /usr/lib/dovecot/lmtp /usr/lib/dovecot/modules/lib90_sieve_plugin.so /usr/lib/dovecot/submission /usr/lib/python3/dist-packages/aiosmtpd /usr/bin/swaks /usr/bin/openssl /usr/sbin/smtp-source python3 /usr/bin/strace

# Test files at once. Most of a test's time is spent waiting on sockets and
# the real servers it starts (rspamd, Postfix, Dovecot, dnsmasq), so twice
# the two cores of our CI machines: 63 s -> 43 s for the suite.
TEST_JOBS ?= 4

.PHONY: run test bench build certs deno deps clean

deps:
	@missing=0; for tool in $(PEERS); do [ -e "$$tool" ] || command -v $$tool >/dev/null 2>&1 || missing=1; done; \
	perl -MIO::Socket::SSL -e1 2>/dev/null || missing=1; \
	if [ $$missing = 1 ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "Installing test peers: $(DEBIAN_PACKAGES)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES) >/dev/null; \
		else \
			echo "The tests need these Debian packages: $(DEBIAN_PACKAGES)"; exit 1; \
		fi; \
	fi

deno:
	@if ! "$(DENO)" --version >/dev/null 2>&1; then \
		echo "Installing Deno $(DENO_VERSION) from npm into .tools/"; \
		npm install --silent --no-audit --no-fund --prefix .tools deno@$(DENO_VERSION) >/dev/null; \
	fi
	@"$(DENO)" install --frozen --quiet

# Starts Letterbox on 127.0.0.1:2525, delivering to ./Maildir, with STARTTLS on a
# self-signed certificate made at start. What a configuration in ARGS needs
# beyond that goes in PERMISSIONS, e.g. PERMISSIONS=--allow-run=/usr/local/bin/on-mail
# (Letterbox names the missing one at start).
run: deno
	@mkdir -p Maildir
	"$(DENO)" run $(V8_FLAGS) $(RUN_PERMISSIONS) $(PERMISSIONS) main.ts $(ARGS)

test: deno deps certs
	"$(DENO)" fmt --check
	"$(DENO)" lint
	"$(DENO)" check main.ts src/ tests/ bench/
	DENO_JOBS=$(TEST_JOBS) "$(DENO)" test --allow-all --frozen --parallel tests/

# The peer to beat, nodemailer's smtp-server (bench/peer/smtp_server_peer.mjs), run by the machine's Node.
SMTP_SERVER_VERSION = 3.21.6

bench: deno deps certs
	@if command -v node >/dev/null && [ ! -d .tools/peers/node_modules/smtp-server ]; then \
		npm install --silent --no-audit --no-fund --prefix .tools/peers smtp-server@$(SMTP_SERVER_VERSION) >/dev/null; \
	fi
	"$(DENO)" run --allow-all bench/bench.ts $(ARGS)

# deno compile downloads its runtime (denort) the first time; where that is not
# reachable, point DENORT_BIN at a denort binary for Deno $(DENO_VERSION). The
# result must run Letterbox: a plain deno binary as DENORT_BIN "succeeds" and
# writes a file that starts a REPL, so the build runs it once and refuses that.
build: deno
	@mkdir -p dist .tools; rm -f dist/letterbox
	@if ! "$(DENO)" compile $(V8_FLAGS) $(BUILD_PERMISSIONS) --output dist/letterbox main.ts >.tools/compile.log 2>&1; then \
		if grep -q -e "error sending request" -e "dns error" -e "tcp connect" .tools/compile.log; then \
			echo "make build: deno compile could not download its runtime (denort) for Deno $(DENO_VERSION); set DENORT_BIN=/path/to/denort" >&2; \
		else cat .tools/compile.log >&2; fi; \
		exit 1; \
	fi
	@if ! dist/letterbox --version </dev/null 2>/dev/null | grep -q '^letterbox '; then \
		rm -f dist/letterbox; \
		echo "make build: the result does not run Letterbox (is DENORT_BIN a denort binary for Deno $(DENO_VERSION), not deno?); removed it" >&2; \
		exit 1; \
	fi
	@echo "Built dist/letterbox: $$(dist/letterbox --version)"

certs:
	@sh certs/make-certs.sh >/dev/null

clean:
	rm -rf dist .tools
