from twisted.application.service import ServiceMaker

irp = ServiceMaker("IRP registry", "irp.tap", "IRP identity registry and CA of one domain (TCP 4604)", "irp")
