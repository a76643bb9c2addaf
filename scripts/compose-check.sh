#!/usr/bin/env bash
# Compose check: validate deploy/compose.yaml (syntax, references, interpolation) without
# starting anything, with whichever tool this machine has: `docker compose` (the Compose v2
# plugin) or `docker-compose` (Debian package `docker-compose`). Prints the tool it used and
# the resolved services; fails loudly when neither tool exists or the file does not validate.
set -euo pipefail

cd "$(dirname "$0")/.."
FILE="deploy/compose.yaml"

if docker compose version >/dev/null 2>&1; then
  tool=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  tool=(docker-compose)
else
  echo "compose-check: neither 'docker compose' nor 'docker-compose' is installed (Debian: apt-get install docker-compose)" >&2
  exit 1
fi

echo "compose-check: ${tool[*]} ($("${tool[@]}" version --short 2>/dev/null || "${tool[@]}" version | head -1))"
"${tool[@]}" -f "$FILE" config --quiet
services="$("${tool[@]}" -f "$FILE" config --services | sort | tr '\n' ' ')"
echo "compose-check: $FILE is valid; services: $services"
for wanted in web-1 web-2 worker redis postgres; do
  case " $services " in
    *" $wanted "*) ;;
    *) echo "compose-check: $FILE lacks the service $wanted" >&2; exit 1 ;;
  esac
done
