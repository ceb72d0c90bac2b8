//go:build tools

// Package tools pins the KEDA commands this module builds: the operator (cmd/operator), the
// external.metrics.k8s.io API server (cmd/adapter) and the admission webhooks (cmd/webhooks).
package tools

import (
	_ "github.com/kedacore/keda/v2/cmd/adapter"
	_ "github.com/kedacore/keda/v2/cmd/operator"
	_ "github.com/kedacore/keda/v2/cmd/webhooks"
)
