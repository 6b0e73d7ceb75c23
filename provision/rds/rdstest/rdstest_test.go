package rdstest_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awsrds "github.com/aws/aws-sdk-go-v2/service/rds"
	"github.com/aws/aws-sdk-go-v2/service/rds/types"
	"github.com/aws/smithy-go"
	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/provision/rds/rdstest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const keyID = "AKIDRDSTEST"

func start(t *testing.T, mod func(*rdstest.Config)) *rdstest.Server {
	t.Helper()
	cfg := rdstest.Config{AdminDSN: pgtest.Shared(t).AdminDSN("postgres"), AccessKeyID: keyID,
		CreateDelay: 300 * time.Millisecond, BackupDelay: 300 * time.Millisecond, DeleteDelay: 100 * time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	s, err := rdstest.Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// client is the real SDK client, retries off so every fault shows.
func client(s *rdstest.Server, key string) *awsrds.Client {
	return awsrds.New(awsrds.Options{
		Region:       s.Region(),
		BaseEndpoint: aws.String(s.URL()),
		Credentials:  credentials.NewStaticCredentialsProvider(key, "secret", ""),
		Retryer:      aws.NopRetryer{},
	})
}

func code(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

func createCluster(ctx context.Context, c *awsrds.Client, id string) (*awsrds.CreateDBClusterOutput, error) {
	return c.CreateDBCluster(ctx, &awsrds.CreateDBClusterInput{
		DBClusterIdentifier: aws.String(id),
		Engine:              aws.String("aurora-postgresql"),
		MasterUsername:      aws.String("master"),
		MasterUserPassword:  aws.String("pass-word-123"),
		DatabaseName:        aws.String("app"),
		ServerlessV2ScalingConfiguration: &types.ServerlessV2ScalingConfiguration{
			MinCapacity: aws.Float64(0), MaxCapacity: aws.Float64(2.5), SecondsUntilAutoPause: aws.Int32(600),
		},
		Tags: []types.Tag{{Key: aws.String("k"), Value: aws.String("v")}},
	})
}

// An Aurora cluster goes creating → backing-up → available, its writer
// too; the SDK reads every field the provider uses; faults come back as
// the SDK's typed errors.
func TestClusterLifecycle(t *testing.T) {
	var clock struct {
		sync.Mutex
		now time.Time
	}
	clock.now = time.Now()
	now := func() time.Time { clock.Lock(); defer clock.Unlock(); return clock.now }
	advance := func(d time.Duration) { clock.Lock(); defer clock.Unlock(); clock.now = clock.now.Add(d) }
	s := start(t, func(c *rdstest.Config) {
		c.CreateDelay, c.BackupDelay, c.DeleteDelay, c.Now = time.Minute, time.Minute, time.Minute, now
	})
	status := func() string {
		d, err := client(s, keyID).DescribeDBClusters(t.Context(), &awsrds.DescribeDBClustersInput{DBClusterIdentifier: aws.String("my-cluster")})
		if err != nil {
			t.Fatal(err)
		}
		return aws.ToString(d.DBClusters[0].Status)
	}
	c := client(s, keyID)
	ctx := t.Context()
	out, err := createCluster(ctx, c, "My-Cluster")
	if err != nil {
		t.Fatal(err)
	}
	got := out.DBCluster
	if aws.ToString(got.DBClusterIdentifier) != "my-cluster" || aws.ToString(got.Status) != "creating" {
		t.Errorf("created: id %q status %q, want my-cluster (stored lower case) creating", aws.ToString(got.DBClusterIdentifier), aws.ToString(got.Status))
	}
	wantHost := "my-cluster.cluster-" + rdstest.EndpointSuffix + ".us-east-1.rds.amazonaws.com"
	if aws.ToString(got.Endpoint) != wantHost || aws.ToInt32(got.Port) != 5432 {
		t.Errorf("endpoint %s:%d, want %s:5432", aws.ToString(got.Endpoint), aws.ToInt32(got.Port), wantHost)
	}
	sc := got.ServerlessV2ScalingConfiguration
	if sc == nil || aws.ToFloat64(sc.MinCapacity) != 0 || aws.ToFloat64(sc.MaxCapacity) != 2.5 || aws.ToInt32(sc.SecondsUntilAutoPause) != 600 {
		t.Errorf("scaling %+v", sc)
	}
	if len(got.TagList) != 1 || aws.ToString(got.TagList[0].Key) != "k" {
		t.Errorf("tags %+v", got.TagList)
	}
	if _, err := createCluster(ctx, c, "my-cluster"); !errors.As(err, new(*types.DBClusterAlreadyExistsFault)) {
		t.Errorf("second create: %v, want DBClusterAlreadyExistsFault", err)
	}
	if _, err := c.CreateDBInstance(ctx, &awsrds.CreateDBInstanceInput{DBInstanceIdentifier: aws.String("my-writer"),
		DBClusterIdentifier: aws.String("nope"), DBInstanceClass: aws.String("db.serverless"), Engine: aws.String("aurora-postgresql")}); !errors.As(err, new(*types.DBClusterNotFoundFault)) {
		t.Errorf("writer of a missing cluster: %v, want DBClusterNotFoundFault", err)
	}
	w, err := c.CreateDBInstance(ctx, &awsrds.CreateDBInstanceInput{DBInstanceIdentifier: aws.String("my-writer"),
		DBClusterIdentifier: aws.String("my-cluster"), DBInstanceClass: aws.String("db.serverless"), Engine: aws.String("aurora-postgresql")})
	if err != nil {
		t.Fatal(err)
	}
	if w.DBInstance.Endpoint != nil {
		t.Errorf("a creating instance has an endpoint: %+v", w.DBInstance.Endpoint)
	}
	for _, want := range []string{"creating", "backing-up", "available"} {
		if got := status(); got != want {
			t.Errorf("status %q, want %q", got, want)
		}
		advance(time.Minute)
	}
	d, err := c.DescribeDBClusters(ctx, &awsrds.DescribeDBClustersInput{DBClusterIdentifier: aws.String("my-cluster")})
	if err != nil {
		t.Fatal(err)
	}
	if m := d.DBClusters[0].DBClusterMembers; len(m) != 1 || aws.ToString(m[0].DBInstanceIdentifier) != "my-writer" || !aws.ToBool(m[0].IsClusterWriter) {
		t.Errorf("members %+v", m)
	}
	wd, err := c.DescribeDBInstances(ctx, &awsrds.DescribeDBInstancesInput{DBInstanceIdentifier: aws.String("my-writer")})
	if err != nil {
		t.Fatal(err)
	}
	if in := wd.DBInstances[0]; aws.ToString(in.DBInstanceStatus) != "available" || in.Endpoint == nil || aws.ToInt32(in.Endpoint.Port) != 5432 {
		t.Errorf("writer %s, endpoint %+v; want available at port 5432", aws.ToString(in.DBInstanceStatus), in.Endpoint)
	}

	_, err = c.DeleteDBCluster(ctx, &awsrds.DeleteDBClusterInput{DBClusterIdentifier: aws.String("my-cluster"), SkipFinalSnapshot: aws.Bool(true)})
	if code(err) != "InvalidDBClusterStateFault" {
		t.Errorf("delete with a live writer: %v, want InvalidDBClusterStateFault", err)
	}
	_, err = c.DeleteDBCluster(ctx, &awsrds.DeleteDBClusterInput{DBClusterIdentifier: aws.String("my-cluster")})
	if code(err) != "InvalidParameterCombination" {
		t.Errorf("delete without SkipFinalSnapshot or a snapshot name: %v, want InvalidParameterCombination", err)
	}
	if _, err := c.DeleteDBInstance(ctx, &awsrds.DeleteDBInstanceInput{DBInstanceIdentifier: aws.String("my-writer")}); err != nil {
		t.Fatal(err)
	}
	del, err := c.DeleteDBCluster(ctx, &awsrds.DeleteDBClusterInput{DBClusterIdentifier: aws.String("my-cluster"), FinalDBSnapshotIdentifier: aws.String("my-final")})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(del.DBCluster.Status) != "deleting" || status() != "deleting" {
		t.Errorf("status after delete %q", aws.ToString(del.DBCluster.Status))
	}
	advance(time.Minute)
	if _, err := c.DescribeDBClusters(ctx, &awsrds.DescribeDBClustersInput{DBClusterIdentifier: aws.String("my-cluster")}); !errors.As(err, new(*types.DBClusterNotFoundFault)) {
		t.Errorf("describe after the delete delay: %v, want DBClusterNotFoundFault", err)
	}
	if _, err := c.DescribeDBInstances(ctx, &awsrds.DescribeDBInstancesInput{DBInstanceIdentifier: aws.String("my-writer")}); err != nil && !errors.As(err, new(*types.DBInstanceNotFoundFault)) {
		t.Errorf("describe deleted writer: %v", err)
	}
	if snaps := s.Snapshots(); len(snaps) != 1 || snaps[0] != "my-final" {
		t.Errorf("snapshots %v", snaps)
	}
}

// The parameter rules of docs/aws-rds-api.md come back as the API's codes.
func TestValidation(t *testing.T) {
	s := start(t, nil)
	c := client(s, keyID)
	ctx := t.Context()
	for _, id := range []string{"1abc", "a--b", "abc-", strings.Repeat("a", 64), "a_b"} {
		if _, err := createCluster(ctx, c, id); code(err) != "InvalidParameterValue" {
			t.Errorf("identifier %q: %v, want InvalidParameterValue", id, err)
		}
	}
	if _, err := c.CreateDBInstance(ctx, &awsrds.CreateDBInstanceInput{DBInstanceIdentifier: aws.String("pw"), DBInstanceClass: aws.String("db.t4g.micro"),
		Engine: aws.String("postgres"), AllocatedStorage: aws.Int32(20), MasterUsername: aws.String("m"), MasterUserPassword: aws.String("has@sign")}); code(err) != "InvalidParameterValue" {
		t.Errorf("password with @: %v, want InvalidParameterValue", err)
	}
	if _, err := c.CreateDBInstance(ctx, &awsrds.CreateDBInstanceInput{DBInstanceIdentifier: aws.String("st"), DBInstanceClass: aws.String("db.t4g.micro"),
		Engine: aws.String("postgres"), AllocatedStorage: aws.Int32(5), MasterUsername: aws.String("m"), MasterUserPassword: aws.String("password1")}); code(err) != "InvalidParameterValue" {
		t.Errorf("5 GiB: %v, want InvalidParameterValue", err)
	}
	if _, err := c.CreateDBCluster(ctx, &awsrds.CreateDBClusterInput{DBClusterIdentifier: aws.String("noscale"), Engine: aws.String("aurora-postgresql"),
		MasterUsername: aws.String("m"), MasterUserPassword: aws.String("password1")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateDBInstance(ctx, &awsrds.CreateDBInstanceInput{DBInstanceIdentifier: aws.String("noscale-w"), DBClusterIdentifier: aws.String("noscale"),
		DBInstanceClass: aws.String("db.serverless"), Engine: aws.String("aurora-postgresql")}); code(err) != "InvalidParameterCombination" {
		t.Errorf("db.serverless in a cluster without a capacity range: %v, want InvalidParameterCombination", err)
	}
	if _, err := c.DescribeDBInstances(ctx, &awsrds.DescribeDBInstancesInput{DBInstanceIdentifier: aws.String("nope")}); !errors.As(err, new(*types.DBInstanceNotFoundFault)) {
		t.Errorf("describe missing instance: %v, want DBInstanceNotFoundFault", err)
	}
	if _, err := client(s, "AKIDOTHER").DescribeDBClusters(ctx, &awsrds.DescribeDBClustersInput{}); code(err) != "InvalidClientTokenId" {
		t.Errorf("another access key: %v, want InvalidClientTokenId", err)
	}
}

// ThrottleEvery throttles without performing; LoseCreateResponse performs
// and drops the answer.
func TestFaults(t *testing.T) {
	s := start(t, func(c *rdstest.Config) { c.ThrottleEvery = 2 })
	c := client(s, keyID)
	ctx := t.Context()
	if _, err := c.DescribeDBClusters(ctx, &awsrds.DescribeDBClustersInput{}); err != nil {
		t.Fatal(err)
	}
	if _, err := createCluster(ctx, c, "thr"); code(err) != "Throttling" {
		t.Fatalf("second request: %v, want Throttling", err)
	}
	if n := s.Count("aurora", "thr"); n != 0 {
		t.Errorf("a throttled create was performed (%d)", n)
	}
	s.LoseCreateResponse("lost")
	_, err := createCluster(ctx, c, "lost") // request 3: not throttled
	if err == nil || code(err) != "" {
		t.Fatalf("lost answer: %v, want a transport error", err)
	}
	if n := s.Count("aurora", "lost"); n != 1 {
		t.Errorf("the lost create was not performed (%d)", n)
	}
}

// The TLS front refuses plaintext, like RDS with rds.force_ssl=1, and
// endpoints resolve only through Dial while available.
func TestFront(t *testing.T) {
	s := start(t, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	host, port, _ := net.SplitHostPort(s.FrontAddr())
	_, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s user=m dbname=app sslmode=disable", host, port))
	if err == nil || !strings.Contains(err.Error(), "no encryption") {
		t.Errorf("plaintext: %v, want refused", err)
	}
	if _, err := s.Dial(ctx, "tcp", "unknown.cluster-"+rdstest.EndpointSuffix+".us-east-1.rds.amazonaws.com:5432"); err == nil {
		t.Error("Dial of an unknown endpoint succeeded")
	}
}
