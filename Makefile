.PHONY: run stop stop-all test infra images sqlx-prepare logs

## Start Cadenza (infrastructure, images, all four services) and print the URL and a token.
run:
	scripts/run.sh

## Run the quality gates and the whole test suite (what CI runs).
test:
	scripts/test.sh

## Stop the services started by `make run` (`make stop-all` also stops the infrastructure).
stop:
	scripts/stop.sh services

stop-all:
	scripts/stop.sh all

## Install and start Postgres, NATS and Redis on loopback if they are not reachable.
infra:
	scripts/infra.sh up

## Build the local Docker images (base root filesystem, fake agent-server).
images:
	scripts/build-images.sh

## Regenerate the sqlx offline query data after changing a query or a migration.
sqlx-prepare:
	scripts/sqlx-prepare.sh

logs:
	tail -n 50 -f .cadenza/logs/*.log
