#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft, broker+controller) on 127.0.0.1, from Maven Central jars.
#
#   scripts/kafka.sh start [PORT [CONTROLLER_PORT]]
#                                   fetch the jars once (cached in .cache/kafka), format, start; prints bootstrap
#                                   (the controller listens on PORT+1 unless given)
#   scripts/kafka.sh stop           stop it and delete its data
#   scripts/kafka.sh status
#
# KAFKA_HOME_DIR (default .cache/kafka-run) holds the broker's config, data, log and pid.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' scripts/kafka/pom.xml)
# keyed by the pom's content too: a changed dependency list fetches a fresh set of jars
lib="$root/.cache/kafka/$version-$(cksum < scripts/kafka/pom.xml | cut -d' ' -f1)/lib"
run="${KAFKA_HOME_DIR:-$root/.cache/kafka-run}"

fetch() {
  if [ ! -f "$lib/.complete" ]; then
    echo "kafka: fetching Kafka $version jars from Maven Central into $lib" >&2
    mkdir -p "$lib"
    mvn -q -B -f scripts/kafka/pom.xml dependency:copy-dependencies -DoutputDirectory="$lib" \
      -DincludeScope=runtime >&2
    touch "$lib/.complete"
  fi
}

cmd=${1:-status}
case "$cmd" in
  start)
    port=${2:-9092}
    if [ -f "$run/pid" ] && kill -0 "$(cat "$run/pid")" 2>/dev/null; then
      echo "127.0.0.1:$(cat "$run/port")"; exit 0
    fi
    fetch
    rm -rf "$run"; mkdir -p "$run/data"
    controller=${3:-$((port + 1))}
    cat > "$run/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.quorum.bootstrap.servers=127.0.0.1:$controller
log.dirs=$run/data
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
PROPS
    cat > "$run/log4j2.properties" <<'PROPS'
rootLogger.level=WARN
rootLogger.appenderRef.out.ref=OUT
appender.out.type=Console
appender.out.name=OUT
appender.out.layout.type=PatternLayout
appender.out.layout.pattern=[%d] %p %m (%c)%n
PROPS
    cp="$lib/*"
    opts=(-Xmx512m -Dlog4j2.configurationFile="$run/log4j2.properties")
    cluster=$(java -cp "$cp" "${opts[@]}" kafka.tools.StorageTool random-uuid)
    java -cp "$cp" "${opts[@]}" kafka.tools.StorageTool format -t "$cluster" -c "$run/server.properties" --standalone >"$run/format.log" 2>&1
    echo "$port" > "$run/port"
    setsid java -cp "$cp" "${opts[@]}" kafka.Kafka "$run/server.properties" >"$run/broker.log" 2>&1 < /dev/null &
    echo $! > "$run/pid"
    for _ in $(seq 1 120); do
      if (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then echo "127.0.0.1:$port"; exit 0; fi
      if ! kill -0 "$(cat "$run/pid")" 2>/dev/null; then echo "kafka: the broker exited; see $run/broker.log" >&2; tail -20 "$run/broker.log" >&2; exit 1; fi
      sleep 0.5
    done
    echo "kafka: the broker did not open port $port in 60s; see $run/broker.log" >&2; exit 1
    ;;
  stop)
    if [ -f "$run/pid" ]; then
      pid=$(cat "$run/pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -rf "$run"
    ;;
  status)
    if [ -f "$run/pid" ] && kill -0 "$(cat "$run/pid")" 2>/dev/null; then echo "running on 127.0.0.1:$(cat "$run/port")"; else echo "stopped"; exit 1; fi
    ;;
  *) echo "usage: scripts/kafka.sh start [PORT [CONTROLLER_PORT]] | stop | status" >&2; exit 2 ;;
esac
