// Package deploy holds no code: it is the deployment files of pgtenant
// serve and the test that checks them against the code.
//
//	systemd/pgtenant.service    one router process (Type=exec, SIGHUP reload, SIGTERM drain)
//	systemd/pgtenant@.service   several processes on one port (listen_reuseport)
//	systemd/pgtenant.sysusers   the service user
//	docker/Dockerfile           a static binary on distroless, non-root
//	kubernetes/*.yaml           ConfigMap, Deployment, Service, PodDisruptionBudget
//
// deploy_test.go parses them and checks that the ports, probe paths,
// signals, flags, timeouts, Go version and config agree with the code.
package deploy
