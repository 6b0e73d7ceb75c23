package rds

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsrds "github.com/aws/aws-sdk-go-v2/service/rds"
	"github.com/aws/aws-sdk-go-v2/service/rds/types"

	"github.com/pgtenant/pgtenant/provision"
)

// Create makes tenant's cluster and writer (Aurora) or instance (RDS), or
// adopts what exists under its identifier (a create whose answer was lost,
// a crash before the catalog recorded it), and waits, under ctx, until it
// is available. It takes minutes (CreateEstimate): the router runs it in
// the background. Each tenant's master password is derived from
// PasswordKey, so an adopted cluster is logged in to like a new one.
func (p *Provider) Create(ctx context.Context, tenant string) (provision.Endpoint, error) {
	id := p.Identifier(tenant)
	pw := p.password(tenant)
	if p.cfg.Kind == KindAurora {
		return p.createAurora(ctx, tenant, id, pw)
	}
	return p.createRDS(ctx, tenant, id, pw)
}

func (p *Provider) createAurora(ctx context.Context, tenant, id, pw string) (provision.Endpoint, error) {
	in := &awsrds.CreateDBClusterInput{
		DBClusterIdentifier: aws.String(id),
		Engine:              aws.String(auroraEngine),
		EngineVersion:       optional(p.cfg.EngineVersion),
		MasterUsername:      aws.String(p.cfg.masterUsername()),
		MasterUserPassword:  aws.String(pw),
		DatabaseName:        aws.String(p.cfg.database()),
		DBSubnetGroupName:   optional(p.cfg.SubnetGroup),
		VpcSecurityGroupIds: p.cfg.SecurityGroups,
		StorageEncrypted:    aws.Bool(true),
		ServerlessV2ScalingConfiguration: &types.ServerlessV2ScalingConfiguration{
			MinCapacity: aws.Float64(p.cfg.MinCapacity),
			MaxCapacity: aws.Float64(p.cfg.maxCapacity()),
		},
		Tags: p.tags(tenant),
	}
	if p.cfg.MinCapacity == 0 { // auto-pause applies only at 0 ACUs (§3.1)
		in.ServerlessV2ScalingConfiguration.SecondsUntilAutoPause = aws.Int32(int32(p.cfg.autoPause()))
	}
	var c types.DBCluster
	for {
		err := p.call(ctx, "CreateDBCluster", func(ctx context.Context) error {
			_, err := p.api.CreateDBCluster(ctx, in)
			return err
		})
		if err != nil && apiCode(err) != codeClusterExists {
			return provision.Endpoint{}, fmt.Errorf("rds: create cluster %s: %w", id, err)
		}
		if c, err = p.describeCluster(ctx, id); errors.Is(err, provision.ErrTenantNotFound) {
			continue // gone between the two calls: create again
		} else if err != nil {
			return provision.Endpoint{}, err
		}
		if err := checkTag(id, tenant, c.TagList); err != nil {
			return provision.Endpoint{}, err
		}
		if aws.ToString(c.Status) != "deleting" {
			break
		}
		// A cluster of the same name is still being deleted: wait, then
		// create anew (adopting it would hand out a dying database).
		p.log.Info("rds: waiting for a deleted cluster to go before creating it again", "id", id)
		if err := p.waitClusterGone(ctx, id); err != nil {
			return provision.Endpoint{}, err
		}
	}

	writer := id + writerSuffix
	win := &awsrds.CreateDBInstanceInput{
		DBInstanceIdentifier: aws.String(writer),
		DBClusterIdentifier:  aws.String(id),
		DBInstanceClass:      aws.String(auroraInstance),
		Engine:               aws.String(auroraEngine),
		Tags:                 p.tags(tenant),
	}
	for {
		err := p.call(ctx, "CreateDBInstance", func(ctx context.Context) error {
			_, err := p.api.CreateDBInstance(ctx, win)
			return err
		})
		if err != nil && apiCode(err) != codeInstanceExists {
			return provision.Endpoint{}, fmt.Errorf("rds: create writer instance %s: %w", writer, err)
		}
		in, err := p.describeInstance(ctx, writer)
		if errors.Is(err, provision.ErrTenantNotFound) {
			continue
		} else if err != nil {
			return provision.Endpoint{}, err
		}
		if aws.ToString(in.DBInstanceStatus) != "deleting" {
			break
		}
		if err := p.waitInstanceGone(ctx, writer); err != nil {
			return provision.Endpoint{}, err
		}
	}

	w := p.newPoller()
	for {
		c, err := p.describeCluster(ctx, id)
		if err != nil {
			return provision.Endpoint{}, err
		}
		cs := aws.ToString(c.Status)
		in, err := p.describeInstance(ctx, writer)
		if err != nil {
			return provision.Endpoint{}, err
		}
		is := aws.ToString(in.DBInstanceStatus)
		switch {
		case stuck[cs]:
			return provision.Endpoint{}, &StatusError{Identifier: id, Status: cs}
		case stuck[is]:
			return provision.Endpoint{}, &StatusError{Identifier: writer, Status: is}
		case cs == "deleting" || is == "deleting":
			return provision.Endpoint{}, fmt.Errorf("rds: %s is being deleted while it is created: retry", id)
		case cs == "available" && is == "available" && aws.ToString(c.Endpoint) != "":
			return provision.Endpoint{
				Host:       aws.ToString(c.Endpoint),
				Port:       uint16(aws.ToInt32(c.Port)),
				Database:   or(aws.ToString(c.DatabaseName), p.cfg.database()),
				User:       or(aws.ToString(c.MasterUsername), p.cfg.masterUsername()),
				Password:   pw,
				ProviderID: id,
			}, nil
		}
		p.log.Debug("rds: waiting for cluster", "id", id, "cluster", cs, "writer", is)
		if err := w.wait(ctx); err != nil {
			return provision.Endpoint{}, fmt.Errorf("rds: cluster %s not available yet (cluster %s, writer %s): %w", id, cs, is, err)
		}
	}
}

func (p *Provider) createRDS(ctx context.Context, tenant, id, pw string) (provision.Endpoint, error) {
	in := &awsrds.CreateDBInstanceInput{
		DBInstanceIdentifier: aws.String(id),
		DBInstanceClass:      aws.String(p.cfg.instanceClass()),
		Engine:               aws.String(rdsEngine),
		EngineVersion:        optional(p.cfg.EngineVersion),
		AllocatedStorage:     aws.Int32(int32(p.cfg.allocatedStorage())),
		MasterUsername:       aws.String(p.cfg.masterUsername()),
		MasterUserPassword:   aws.String(pw),
		DBName:               aws.String(p.cfg.database()),
		DBSubnetGroupName:    optional(p.cfg.SubnetGroup),
		VpcSecurityGroupIds:  p.cfg.SecurityGroups,
		StorageEncrypted:     aws.Bool(true),
		Tags:                 p.tags(tenant),
	}
	for {
		err := p.call(ctx, "CreateDBInstance", func(ctx context.Context) error {
			_, err := p.api.CreateDBInstance(ctx, in)
			return err
		})
		if err != nil && apiCode(err) != codeInstanceExists {
			return provision.Endpoint{}, fmt.Errorf("rds: create instance %s: %w", id, err)
		}
		inst, err := p.describeInstance(ctx, id)
		if errors.Is(err, provision.ErrTenantNotFound) {
			continue
		} else if err != nil {
			return provision.Endpoint{}, err
		}
		if err := checkTag(id, tenant, inst.TagList); err != nil {
			return provision.Endpoint{}, err
		}
		if aws.ToString(inst.DBInstanceStatus) != "deleting" {
			break
		}
		p.log.Info("rds: waiting for a deleted instance to go before creating it again", "id", id)
		if err := p.waitInstanceGone(ctx, id); err != nil {
			return provision.Endpoint{}, err
		}
	}
	w := p.newPoller()
	for {
		inst, err := p.describeInstance(ctx, id)
		if err != nil {
			return provision.Endpoint{}, err
		}
		st := aws.ToString(inst.DBInstanceStatus)
		switch {
		case stuck[st]:
			return provision.Endpoint{}, &StatusError{Identifier: id, Status: st}
		case st == "deleting":
			return provision.Endpoint{}, fmt.Errorf("rds: %s is being deleted while it is created: retry", id)
		case st == "available" && inst.Endpoint != nil && aws.ToString(inst.Endpoint.Address) != "":
			return provision.Endpoint{
				Host:       aws.ToString(inst.Endpoint.Address),
				Port:       uint16(aws.ToInt32(inst.Endpoint.Port)),
				Database:   or(aws.ToString(inst.DBName), p.cfg.database()),
				User:       or(aws.ToString(inst.MasterUsername), p.cfg.masterUsername()),
				Password:   pw,
				ProviderID: id,
			}, nil
		}
		p.log.Debug("rds: waiting for instance", "id", id, "status", st)
		if err := w.wait(ctx); err != nil {
			return provision.Endpoint{}, fmt.Errorf("rds: instance %s not available yet (%s): %w", id, st, err)
		}
	}
}

// describeCluster returns ErrTenantNotFound when there is no such cluster.
func (p *Provider) describeCluster(ctx context.Context, id string) (types.DBCluster, error) {
	var out *awsrds.DescribeDBClustersOutput
	err := p.call(ctx, "DescribeDBClusters", func(ctx context.Context) (err error) {
		out, err = p.api.DescribeDBClusters(ctx, &awsrds.DescribeDBClustersInput{DBClusterIdentifier: aws.String(id)})
		return err
	})
	switch {
	case apiCode(err) == codeClusterNotFound:
		return types.DBCluster{}, provision.ErrTenantNotFound
	case err != nil:
		return types.DBCluster{}, fmt.Errorf("rds: describe cluster %s: %w", id, err)
	case len(out.DBClusters) == 0:
		return types.DBCluster{}, provision.ErrTenantNotFound
	}
	return out.DBClusters[0], nil
}

// describeInstance returns ErrTenantNotFound when there is no such instance.
func (p *Provider) describeInstance(ctx context.Context, id string) (types.DBInstance, error) {
	var out *awsrds.DescribeDBInstancesOutput
	err := p.call(ctx, "DescribeDBInstances", func(ctx context.Context) (err error) {
		out, err = p.api.DescribeDBInstances(ctx, &awsrds.DescribeDBInstancesInput{DBInstanceIdentifier: aws.String(id)})
		return err
	})
	switch {
	case apiCode(err) == codeInstanceMissing:
		return types.DBInstance{}, provision.ErrTenantNotFound
	case err != nil:
		return types.DBInstance{}, fmt.Errorf("rds: describe instance %s: %w", id, err)
	case len(out.DBInstances) == 0:
		return types.DBInstance{}, provision.ErrTenantNotFound
	}
	return out.DBInstances[0], nil
}

func (p *Provider) waitClusterGone(ctx context.Context, id string) error {
	w := p.newPoller()
	for {
		_, err := p.describeCluster(ctx, id)
		if errors.Is(err, provision.ErrTenantNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		if err := w.wait(ctx); err != nil {
			return fmt.Errorf("rds: cluster %s still being deleted: %w", id, err)
		}
	}
}

func (p *Provider) waitInstanceGone(ctx context.Context, id string) error {
	w := p.newPoller()
	for {
		_, err := p.describeInstance(ctx, id)
		if errors.Is(err, provision.ErrTenantNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		if err := w.wait(ctx); err != nil {
			return fmt.Errorf("rds: instance %s still being deleted: %w", id, err)
		}
	}
}

// finalSnapshot is the snapshot name a delete asks for, or nil when
// SkipFinalSnapshot is set.
func (p *Provider) finalSnapshot(id string) (*bool, *string) {
	if p.cfg.SkipFinalSnapshot {
		return aws.Bool(true), nil
	}
	return aws.Bool(false), aws.String(id + "-final-" + time.Now().UTC().Format("20060102-150405"))
}

// Delete removes tenant's cluster and writer (Aurora) or instance (RDS),
// with a final snapshot unless SkipFinalSnapshot, and waits until they
// are gone, so the tenant can be created again. It returns
// provision.ErrTenantNotFound when nothing exists, and a *ForeignError,
// deleting nothing, when the identifier belongs to someone else.
func (p *Provider) Delete(ctx context.Context, tenant string) error {
	id := p.Identifier(tenant)
	if p.cfg.Kind == KindAurora {
		return p.deleteAurora(ctx, tenant, id)
	}
	return p.deleteRDS(ctx, tenant, id)
}

func (p *Provider) deleteAurora(ctx context.Context, tenant, id string) error {
	c, err := p.describeCluster(ctx, id)
	if err != nil {
		return err // ErrTenantNotFound included
	}
	if err := checkTag(id, tenant, c.TagList); err != nil {
		return err
	}
	skip, snap := p.finalSnapshot(id)
	w := p.newPoller()
	// Members first (§3.3). A member still creating refuses its delete
	// (InvalidDBInstanceState), and the cluster refuses while it has live
	// members: so both are tried again until the cluster is deleting.
	for aws.ToString(c.Status) != "deleting" {
		for _, m := range c.DBClusterMembers {
			mid := aws.ToString(m.DBInstanceIdentifier)
			err := p.call(ctx, "DeleteDBInstance", func(ctx context.Context) error {
				_, err := p.api.DeleteDBInstance(ctx, &awsrds.DeleteDBInstanceInput{DBInstanceIdentifier: aws.String(mid)})
				return err
			})
			if err != nil && apiCode(err) != codeInstanceMissing && apiCode(err) != codeInstanceState {
				return fmt.Errorf("rds: delete instance %s: %w", mid, err)
			}
		}
		err := p.call(ctx, "DeleteDBCluster", func(ctx context.Context) error {
			_, err := p.api.DeleteDBCluster(ctx, &awsrds.DeleteDBClusterInput{
				DBClusterIdentifier: aws.String(id), SkipFinalSnapshot: skip, FinalDBSnapshotIdentifier: snap,
			})
			return err
		})
		if err == nil || apiCode(err) == codeClusterNotFound {
			break
		}
		if apiCode(err) != codeClusterState {
			return fmt.Errorf("rds: delete cluster %s: %w", id, err)
		}
		if err := w.wait(ctx); err != nil {
			return fmt.Errorf("rds: delete cluster %s (%s): %w", id, aws.ToString(c.Status), err)
		}
		if c, err = p.describeCluster(ctx, id); errors.Is(err, provision.ErrTenantNotFound) {
			return nil
		} else if err != nil {
			return err
		}
	}
	return p.waitClusterGone(ctx, id)
}

func (p *Provider) deleteRDS(ctx context.Context, tenant, id string) error {
	inst, err := p.describeInstance(ctx, id)
	if err != nil {
		return err
	}
	if err := checkTag(id, tenant, inst.TagList); err != nil {
		return err
	}
	skip, snap := p.finalSnapshot(id)
	w := p.newPoller()
	for aws.ToString(inst.DBInstanceStatus) != "deleting" {
		err := p.call(ctx, "DeleteDBInstance", func(ctx context.Context) error {
			_, err := p.api.DeleteDBInstance(ctx, &awsrds.DeleteDBInstanceInput{
				DBInstanceIdentifier: aws.String(id), SkipFinalSnapshot: skip, FinalDBSnapshotIdentifier: snap,
			})
			return err
		})
		if err == nil || apiCode(err) == codeInstanceMissing {
			break
		}
		if apiCode(err) != codeInstanceState {
			return fmt.Errorf("rds: delete instance %s: %w", id, err)
		}
		// Still creating or backing up, or already deleting (an earlier
		// answer was lost): look again.
		if err := w.wait(ctx); err != nil {
			return fmt.Errorf("rds: delete instance %s (%s): %w", id, aws.ToString(inst.DBInstanceStatus), err)
		}
		if inst, err = p.describeInstance(ctx, id); errors.Is(err, provision.ErrTenantNotFound) {
			return nil
		} else if err != nil {
			return err
		}
	}
	return p.waitInstanceGone(ctx, id)
}

// Exists says whether tenant's cluster (Aurora) or instance (RDS) exists
// and is not being deleted. It only describes; it creates nothing.
func (p *Provider) Exists(ctx context.Context, tenant string) (bool, error) {
	id := p.Identifier(tenant)
	var status string
	if p.cfg.Kind == KindAurora {
		c, err := p.describeCluster(ctx, id)
		if errors.Is(err, provision.ErrTenantNotFound) {
			return false, nil
		} else if err != nil {
			return false, err
		}
		status = aws.ToString(c.Status)
	} else {
		in, err := p.describeInstance(ctx, id)
		if errors.Is(err, provision.ErrTenantNotFound) {
			return false, nil
		} else if err != nil {
			return false, err
		}
		status = aws.ToString(in.DBInstanceStatus)
	}
	return status != "deleting", nil
}
