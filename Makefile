# Operating the fogsched stack on Docker Swarm (run on a manager). Walkthrough: docs/deploy.md.
#   make secrets           create the Swarm secrets (once)
#   make up                deploy or update the stack          make down    remove it (volumes stay)
#   make status            services, tasks and their state      make health  brokers, membership, fog nodes, queues, outbox lag
#   make logs S=api        follow one service's logs            make scale-light N=4 (also medium, heavy; the autoscaler may change it back)
#   make probe API_KEY=k   submit a noop task through the API and wait for it (the stack requires a key)
#   make test-failover API_KEY=k  stop one broker task, show cluster, membership and task flow recover
# fogsched commands run inside a task of the stack on this node (see FOGSCHED below).

STACK      ?= fogsched
COMPOSE    ?= deploy/swarm/stack.yml
API        ?= http://127.0.0.1:8080
API_KEY    ?=
BROKER     ?= 2
N          ?= 2
S          ?= api
IMAGE      ?= fogsched/fogsched
TAG        ?= 0.1.0
export FOGSCHED_IMAGE := $(IMAGE)
export FOGSCHED_TAG   := $(TAG)
# The autoscaler scales <stack>_fog-<tier>: it learns the stack's name from here.
export FOGSCHED_STACK := $(STACK)

# A fogsched CLI that sees the stack's networks and secrets: `docker exec` into a running
# api/coordinator/relay/ingest task on this node.
FOGSCHED = docker exec $$(for s in api coordinator relay ingest; do docker ps -q -f "label=com.docker.swarm.service.name=$(STACK)_$$s" -f health=healthy; done | head -n1 | grep . || { echo "no healthy fogsched task on this node: run make on a node that hosts one" >&2; echo none; }) fogsched
# rabbitmqctl of a broker task on this node (any of the three).
RABBITMQCTL = docker exec $$(for i in 1 2 3; do docker ps -q -f "label=com.docker.swarm.service.name=$(STACK)_rabbitmq-$$i"; done | head -n1 | grep . || { echo "no broker task on this node" >&2; echo none; })

.PHONY: image secrets definitions config up down status health logs scale-light scale-medium scale-heavy probe test-failover

image:
	docker build -t $(IMAGE):$(TAG) .

secrets:
	deploy/swarm/create-secrets.sh

# Regenerates definitions.json from the code's topology (test/deploy checks it is current).
definitions:
	npm run build --silent && TIERS="light:0.5:512,medium:0.75:768,heavy:1:1024" FOG_ZONES="site-a,site-b" node bin/fogsched.js topology export --vhost /fog --out deploy/swarm/definitions.json

config:
	docker stack config -c $(COMPOSE) > /dev/null && echo "$(COMPOSE): ok"

up: config
	docker stack deploy --with-registry-auth --prune -c $(COMPOSE) $(STACK)

down:
	docker stack rm $(STACK)

status:
	docker stack services $(STACK)
	docker stack ps $(STACK) --no-trunc --filter desired-state=running --format 'table {{.Name}}\t{{.Node}}\t{{.CurrentState}}\t{{.Error}}'

health:
	@echo "== services and connections (fogsched doctor)"
	-$(FOGSCHED) doctor
	@echo "== brokers, Redis membership keys, fog nodes, queue depths, outbox lag (fogsched cluster status)"
	-$(FOGSCHED) cluster status
	@echo "== RabbitMQ cluster as the brokers see it"
	-$(RABBITMQCTL) rabbitmq-diagnostics -q cluster_status
	-$(RABBITMQCTL) rabbitmq-queues -q check_if_node_is_quorum_critical
	-$(RABBITMQCTL) rabbitmqctl -q list_queues -p /fog name type messages consumers leader members

logs:
	docker service logs --follow --tail 200 --timestamps $(STACK)_$(S)

scale-light scale-medium scale-heavy: scale-%:
	docker service scale $(STACK)_fog-$*=$(N)

# Submits a noop task and waits until it has succeeded (the whole loop works).
probe:
	@test -n "$(API_KEY)" || { echo "probe: the stack requires an API key: make probe API_KEY=<key> (create-secrets.sh printed it)" >&2; exit 2; }
	@id=$$(curl -fsS -XPOST $(API)/v1/tasks -H 'content-type: application/json' -H 'X-API-Key: $(API_KEY)' -d '{"type":"noop","payload":{"probe":true}}' | sed -n 's/.*"id":"\([^"]*\)".*/\1/p'); \
	test -n "$$id" || { echo "probe: submit failed"; exit 1; }; \
	for i in $$(seq 1 60); do \
	  state=$$(curl -fsS -H 'X-API-Key: $(API_KEY)' $(API)/v1/tasks/$$id | sed -n 's/.*"state":"\([^"]*\)".*/\1/p'); \
	  [ "$$state" = succeeded ] && { echo "probe: task $$id succeeded after $${i}s"; exit 0; }; sleep 1; \
	done; echo "probe: task $$id still $$state after 60s"; exit 1

test-failover:
	@echo "== before: cluster, membership, task flow"
	@$(MAKE) -s health probe
	@echo "== stopping broker rabbitmq-$(BROKER) (its task goes away, its volume stays)"
	docker service scale $(STACK)_rabbitmq-$(BROKER)=0
	@sleep 20
	@echo "== one broker down: quorum queues keep a majority; tasks must still flow"
	@$(MAKE) -s health probe
	@echo "== bringing rabbitmq-$(BROKER) back"
	docker service scale $(STACK)_rabbitmq-$(BROKER)=1
	@echo "== waiting for it to rejoin (its heartbeat key returns to rabbitmq:cluster:members within 90 s)"
	@sleep 90
	@$(MAKE) -s health probe
