package rdstest

import (
	"encoding/xml"
	"time"
)

// The XML shapes below are the subset of the Query API's DBCluster and
// DBInstance the provider reads, with the element names of the API
// (docs/aws-rds-api.md §3.2).

type xmlTag struct {
	Key   string `xml:"Key"`
	Value string `xml:"Value"`
}

type xmlMember struct {
	DBInstanceIdentifier string `xml:"DBInstanceIdentifier"`
	IsClusterWriter      bool   `xml:"IsClusterWriter"`
}

type xmlScaling struct {
	MinCapacity           float64 `xml:"MinCapacity"`
	MaxCapacity           float64 `xml:"MaxCapacity"`
	SecondsUntilAutoPause int     `xml:"SecondsUntilAutoPause,omitempty"`
}

type xmlCluster struct {
	XMLName                          xml.Name    `xml:"DBCluster"`
	DBClusterIdentifier              string      `xml:"DBClusterIdentifier"`
	DBClusterArn                     string      `xml:"DBClusterArn"`
	Status                           string      `xml:"Status"`
	Engine                           string      `xml:"Engine"`
	EngineVersion                    string      `xml:"EngineVersion"`
	EngineMode                       string      `xml:"EngineMode"`
	Endpoint                         string      `xml:"Endpoint"`
	ReaderEndpoint                   string      `xml:"ReaderEndpoint"`
	Port                             int         `xml:"Port"`
	MasterUsername                   string      `xml:"MasterUsername"`
	DatabaseName                     string      `xml:"DatabaseName"`
	ClusterCreateTime                string      `xml:"ClusterCreateTime"`
	DBClusterMembers                 []xmlMember `xml:"DBClusterMembers>DBClusterMember"`
	ServerlessV2ScalingConfiguration *xmlScaling `xml:"ServerlessV2ScalingConfiguration,omitempty"`
	TagList                          []xmlTag    `xml:"TagList>Tag"`
}

type xmlEndpoint struct {
	Address      string `xml:"Address"`
	Port         int    `xml:"Port"`
	HostedZoneId string `xml:"HostedZoneId"`
}

type xmlInstance struct {
	XMLName              xml.Name     `xml:"DBInstance"`
	DBInstanceIdentifier string       `xml:"DBInstanceIdentifier"`
	DBInstanceArn        string       `xml:"DBInstanceArn"`
	DBInstanceClass      string       `xml:"DBInstanceClass"`
	DBInstanceStatus     string       `xml:"DBInstanceStatus"`
	Engine               string       `xml:"Engine"`
	EngineVersion        string       `xml:"EngineVersion"`
	MasterUsername       string       `xml:"MasterUsername"`
	DBName               string       `xml:"DBName,omitempty"`
	AllocatedStorage     int          `xml:"AllocatedStorage"`
	DBClusterIdentifier  string       `xml:"DBClusterIdentifier,omitempty"`
	Endpoint             *xmlEndpoint `xml:"Endpoint,omitempty"`
	InstanceCreateTime   string       `xml:"InstanceCreateTime,omitempty"`
	TagList              []xmlTag     `xml:"TagList>Tag"`
}

const account = "123456789012"

func xmlTags(t [][2]string) []xmlTag {
	out := make([]xmlTag, 0, len(t))
	for _, kv := range t {
		out = append(out, xmlTag{Key: kv[0], Value: kv[1]})
	}
	return out
}

// xmlClusterLocked describes c. Caller holds s.mu (for the members).
func (s *Server) xmlClusterLocked(c *cluster, now time.Time) xmlCluster {
	x := xmlCluster{
		DBClusterIdentifier: c.id,
		DBClusterArn:        "arn:aws:rds:" + s.cfg.region() + ":" + account + ":cluster:" + c.id,
		Status:              c.status(now),
		Engine:              c.engine,
		EngineVersion:       c.version,
		EngineMode:          "provisioned",
		Endpoint:            s.clusterHost(c.id),
		ReaderEndpoint:      c.id + ".cluster-ro-" + s.domain(),
		Port:                Port,
		MasterUsername:      c.user,
		DatabaseName:        c.dbname,
		ClusterCreateTime:   c.created.UTC().Format(time.RFC3339),
		TagList:             xmlTags(c.tags),
	}
	if c.scaling.configured {
		x.ServerlessV2ScalingConfiguration = &xmlScaling{MinCapacity: c.scaling.min, MaxCapacity: c.scaling.max, SecondsUntilAutoPause: c.scaling.autoPause}
	}
	for _, in := range s.mu.instances {
		if in.cluster == c.id {
			x.DBClusterMembers = append(x.DBClusterMembers, xmlMember{DBInstanceIdentifier: in.id, IsClusterWriter: true})
		}
	}
	return x
}

// xmlInstance describes in; like RDS it has no Endpoint while creating.
func (s *Server) xmlInstance(in *instance, now time.Time) xmlInstance {
	x := xmlInstance{
		DBInstanceIdentifier: in.id,
		DBInstanceArn:        "arn:aws:rds:" + s.cfg.region() + ":" + account + ":db:" + in.id,
		DBInstanceClass:      in.class,
		DBInstanceStatus:     in.status(now),
		Engine:               in.engine,
		EngineVersion:        in.version,
		MasterUsername:       in.user,
		DBName:               in.dbname,
		AllocatedStorage:     in.storage,
		DBClusterIdentifier:  in.cluster,
		TagList:              xmlTags(in.tags),
	}
	if in.cluster != "" {
		x.AllocatedStorage = 1 // Aurora reports 1: storage grows by itself
	}
	if st := x.DBInstanceStatus; st != statusCreating {
		x.Endpoint = &xmlEndpoint{Address: s.instanceHost(in.id), Port: Port, HostedZoneId: "Z2R2ITUGPM61AM"}
		x.InstanceCreateTime = in.created.UTC().Format(time.RFC3339)
	}
	return x
}
