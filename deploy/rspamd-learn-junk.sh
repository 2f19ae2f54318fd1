#!/bin/sh
# Teaches rspamd's Bayes classifier from what users moved into their Junk folders (and out of
# it, into the inbox). Run daily from cron as root, e.g.
#   0 4 * * * /usr/local/bin/rspamd-learn-junk /var/vmail
# rspamc remembers what it learnt (by message digest), so messages seen before are skipped.
set -eu
ROOT=${1:-/var/vmail}
find "$ROOT" -path '*/.Junk/cur/*' -type f -mtime -2 -print0 | xargs -0 -r rspamc learn_spam >/dev/null
find "$ROOT" -path '*/cur/*' -not -path '*/.*/cur/*' -type f -mtime -2 -print0 |
  xargs -0 -r rspamc learn_ham >/dev/null
