package main

import (
	"os"

	"sigs.k8s.io/kwok/pkg/config"
	"sigs.k8s.io/kwok/pkg/kwok/cmd"
	"sigs.k8s.io/kwok/pkg/log"
	"sigs.k8s.io/kwok/pkg/utils/signals"

	"github.com/spf13/pflag"
)

// runKwok runs the kwok controller as its own main package does (cmd/kwok), with the
// stages given by --config.
func runKwok(args []string) error {
	// kwok's configuration loader reads os.Args itself.
	os.Args = append([]string{"kwok"}, args...)
	flagset := pflag.NewFlagSet("global", pflag.ContinueOnError)
	flagset.ParseErrorsAllowlist.UnknownFlags = true
	flagset.Usage = func() {}
	ctx := signals.SetupSignalContext()
	ctx, _ = log.InitFlags(ctx, flagset)
	ctx, err := config.InitFlags(ctx, flagset)
	if err != nil {
		return err
	}
	command := cmd.NewCommand(ctx)
	// Kubernetes' own --version flag (registered globally by component-base) would collide
	// with the one cobra adds for a command that has a version.
	command.Version = ""
	command.PersistentFlags().AddFlagSet(flagset)
	command.SetArgs(args)
	return command.ExecuteContext(ctx)
}
