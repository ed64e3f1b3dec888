// A second MQTT v5 broker for the scale-out drill (bench/scale_out_drill.py --broker mochi):
// mochi-mqtt v2.7.9 with MQTT v5, shared subscriptions, retained messages and $SYS, on one
// loopback TCP listener. Authentication: allow-all (auth.AllowHook), so it listens on
// 127.0.0.1 only and is for this machine's drill, never a deployment. Sessions and retained
// messages live in memory (no persistence hook): a broker restart loses them.
package main

import (
	"flag"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:1883", "TCP listener (keep it on loopback: allow-all auth)")
	sysInterval := flag.Int64("sys-interval", 10, "seconds between $SYS publishes")
	flag.Parse()

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClientWritesPending = 64 * 1024 // a bridge taking a 5,000-device burst
	caps.MaximumInflight = 65535
	caps.MaximumPacketSize = 1048576 // as broker/mosquitto.conf.template
	server := mqtt.New(&mqtt.Options{
		Capabilities:           caps,
		SysTopicResendInterval: *sysInterval,
		Logger:                 slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err := server.AddHook(new(auth.AllowHook), nil); err != nil {
		log.Fatal(err)
	}
	if err := server.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: *addr})); err != nil {
		log.Fatal(err)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		if err := server.Serve(); err != nil {
			log.Fatal(err)
		}
	}()
	<-stop
	_ = server.Close()
}
